package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"hsmemu/daemon/remote/remotetest"
)

// wipeSections are the sections cryptoki/e2e/c/wipe.c runs, in order.
var wipeSections = []string{"setup", "secrets", "scan", "final"}

// wipeScanned is the line each scan prints: how much memory it read and
// the ring mappings it saw.
var wipeScanned = regexp.MustCompile(`(?m)^(scan|final): scanned .*$`)

// TestCNoSecretLeft runs cryptoki/e2e/c/wipe.c (build/e2e-wipe): PINs, a
// key's value and plaintext that went through the module in the
// application's process are nowhere in the memory a core dump of it
// holds, while its session is open and after C_Finalize; the rings are
// left out of the dump (MADV_DONTDUMP). Over the rings, the socket and
// TLS; the ASan/UBSan module keeps freed memory in its quarantine, so it
// shows what freed buffers still hold.
func TestCNoSecretLeft(t *testing.T) {
	a := need(t)
	sanitizers := []string{"ASAN_OPTIONS=detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"}
	runs := []struct {
		name, prog, module string
		env                []string
	}{
		{name: "ring", prog: "build/e2e-wipe", module: a.module, env: []string{"HSMEMU_TRANSPORT=ring"}},
		{name: "socket", prog: "build/e2e-wipe", module: a.module, env: []string{"HSMEMU_TRANSPORT=socket"}},
		{name: "ring-asan", prog: "build/e2e-wipe-asan", module: a.asanModule,
			env: append([]string{"HSMEMU_TRANSPORT=ring"}, sanitizers...)},
		{name: "socket-asan", prog: "build/e2e-wipe-asan", module: a.asanModule,
			env: append([]string{"HSMEMU_TRANSPORT=socket"}, sanitizers...)},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			prog := ctestNeedBuilt(t, r.prog)
			module := ctestNeedBuilt(t, strings.TrimPrefix(r.module, a.root+string(filepath.Separator)))
			out := runCProgram(t, prog, module, r.env, wipeSections, 30)
			for _, l := range wipeScanned.FindAllString(out, -1) {
				t.Log(l)
			}
		})
	}
	// TLS: libssl decrypts a reply in its own read buffer, which the
	// module asks it to wipe (SSL_OP_CLEANSE_PLAINTEXT).
	t.Run("tls", func(t *testing.T) {
		prog := ctestNeedBuilt(t, "build/e2e-wipe")
		pki := remotetest.New(t)
		n := startRemote(t, pki, pki.Daemon)
		out := runCProgramOn(t, n.daemonProc, prog, a.module, remoteEnv(pki, pki.Admin, n.addr), wipeSections, 30)
		for _, l := range wipeScanned.FindAllString(out, -1) {
			t.Log(l)
		}
	})
}
