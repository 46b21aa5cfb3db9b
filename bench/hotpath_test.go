package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"hsmemu/tpmroot/tpmtest"
)

// hpChildren records this process's swtpm and echo server children (those
// of one scratch parent directory) each time a progress line is written,
// that is while Hotpath has them running.
type hpChildren struct {
	dir string

	mu     sync.Mutex
	swtpm  map[int]bool
	echo   map[int]bool
	lines  int
	onLine func(n int)
}

func (c *hpChildren) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.swtpm == nil {
		c.swtpm, c.echo = map[int]bool{}, map[int]bool{}
	}
	for _, pid := range hpChildPids() {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		environ, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		switch {
		case bytes.Contains(cmdline, []byte("swtpm")) && bytes.Contains(cmdline, []byte(c.dir)):
			c.swtpm[pid] = true
		case bytes.Contains(environ, []byte(echoEnv+"="+c.dir)):
			c.echo[pid] = true
		}
	}
	c.lines += bytes.Count(p, []byte("\n"))
	if c.onLine != nil {
		c.onLine(c.lines)
	}
	return len(p), nil
}

// hpChildPids lists the processes whose parent is this one.
func hpChildPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, not ")".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkGone fails the test unless Hotpath ran a swtpm and an echo server
// and both are gone, and the scratch directory with them.
func (c *hpChildren) checkGone(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.swtpm) == 0 || len(c.echo) == 0 {
		t.Errorf("children seen while running: swtpm %v, echo server %v; want one of each", c.swtpm, c.echo)
	}
	for _, m := range []map[int]bool{c.swtpm, c.echo} {
		for pid := range m {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("process %d still there after Hotpath returned (kill 0: %v)", pid, err)
			}
		}
	}
	if ents, err := os.ReadDir(c.dir); err != nil || len(ents) != 0 {
		t.Errorf("scratch parent %s after Hotpath: %v %v; want it empty", c.dir, ents, err)
	}
}

func TestHotpathQuick(t *testing.T) {
	tpmtest.Require(t)
	dir := t.TempDir()
	kids := &hpChildren{dir: dir}
	rs, err := Hotpath(context.Background(), HotpathOptions{StateDir: dir, Count: 1, Quick: true, Progress: kids})
	if err != nil {
		t.Fatal(err)
	}
	kids.checkGone(t)
	if kids.lines != 6 {
		t.Errorf("%d progress lines, want 6", kids.lines)
	}
	want := []string{HotpathOpenWarm, HotpathOpenCold, HotpathSeal, HotpathFloorGCM, HotpathFloorSQLite, HotpathSocketRoundTrip}
	if len(rs) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(rs), len(want), rs)
	}
	byName := map[string]HotpathResult{}
	for i, r := range rs {
		if r.Name != want[i] {
			t.Errorf("result %d is %q, want %q", i, r.Name, want[i])
		}
		if !(r.NsPerOp > 0) || r.NsMin != r.NsPerOp || r.NsMax != r.NsPerOp || r.What == "" || r.AllocsPerOp < 0 {
			t.Errorf("%s: %+v; want a positive time, equal to min and max over one repetition, and a description", r.Name, r)
		}
		byName[r.Name] = r
	}
	ratios := map[string]struct {
		versus string
		floor  float64
	}{
		HotpathOpenWarm: {versus: "floor-gcm", floor: byName[HotpathFloorGCM].NsPerOp},
		HotpathOpenCold: {versus: "floor-gcm+floor-sqlite", floor: byName[HotpathFloorGCM].NsPerOp + byName[HotpathFloorSQLite].NsPerOp},
	}
	for _, r := range rs {
		w, ok := ratios[r.Name]
		if !ok {
			if r.Versus != "" || r.Ratio != 0 {
				t.Errorf("%s: versus %q, ratio %v; want none", r.Name, r.Versus, r.Ratio)
			}
			continue
		}
		if r.Versus != w.versus || math.Abs(r.Ratio-r.NsPerOp/w.floor) > 1e-9*r.Ratio || !(r.Ratio > 0) {
			t.Errorf("%s: versus %q, ratio %v; want %q, %v", r.Name, r.Versus, r.Ratio, w.versus, r.NsPerOp/w.floor)
		}
	}

	var table bytes.Buffer
	if err := WriteHotpathTable(&table, rs); err != nil {
		t.Fatal(err)
	}
	t.Logf("quick run (figures not meaningful):\n%s", table.String())
	starts := map[string]int{}
	for _, line := range strings.Split(table.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			starts[f[0]]++
		}
		if strings.TrimRight(line, " ") != line {
			t.Errorf("table line with trailing blanks: %q", line)
		}
	}
	for _, r := range rs {
		if starts[r.Name] != 2 {
			t.Errorf("table starts %d lines with %s, want 2 (its row and its description)", starts[r.Name], r.Name)
		}
	}
	var js bytes.Buffer
	if err := WriteHotpathJSON(&js, rs); err != nil {
		t.Fatal(err)
	}
	var back []HotpathResult
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != len(rs) {
		t.Fatalf("JSON round trip: %d results, want %d", len(back), len(rs))
	}
	for i := range rs {
		if back[i] != rs[i] {
			t.Errorf("JSON round trip: %+v, want %+v", back[i], rs[i])
		}
	}
	for _, key := range []string{`"ns_per_op"`, `"ns_min"`, `"ns_max"`, `"allocs_per_op"`, `"versus"`, `"ratio"`} {
		if !strings.Contains(js.String(), key) {
			t.Errorf("JSON lacks %s:\n%s", key, js.String())
		}
	}
}

// An error in the middle of a run (here the context ends after the third
// benchmark) leaves nothing behind either.
func TestHotpathCancelled(t *testing.T) {
	tpmtest.Require(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kids := &hpChildren{dir: dir, onLine: func(n int) {
		if n == 3 {
			cancel()
		}
	}}
	rs, err := Hotpath(ctx, HotpathOptions{StateDir: dir, Count: 2, Quick: true, Progress: kids})
	if !errors.Is(err, context.Canceled) || rs != nil {
		t.Fatalf("Hotpath after cancel: %v, %v; want context.Canceled", rs, err)
	}
	kids.checkGone(t)
	if kids.lines != 3 {
		t.Errorf("%d progress lines, want 3", kids.lines)
	}
}

// A TPM that cannot be opened fails the setup and leaves no scratch
// directory.
func TestHotpathBadTPM(t *testing.T) {
	dir := t.TempDir()
	_, err := Hotpath(context.Background(), HotpathOptions{StateDir: dir, TPM: filepath.Join(dir, "no-such-tpm"), Quick: true})
	if err == nil {
		t.Fatal("Hotpath with a missing TPM device succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

func TestHotpathMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{in: []float64{3}, want: 3}, {in: []float64{5, 1, 3}, want: 3}, {in: []float64{4, 1, 3, 2}, want: 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
