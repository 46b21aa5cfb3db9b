package cli

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// adminDoc is the administrator's guide, whose table lists each command's
// exit codes for the people who script them.
const adminDoc = "../docs/admin.md"

// TestAdminExitCodeTable: docs/admin.md's table of commands lists, for
// each row, the exit codes beyond 2 that exitCodes (what --help renders
// and TestExitCodes asserts) gives its commands, no more and no fewer,
// and 2, which every command gives for a usage error.
func TestAdminExitCodeTable(t *testing.T) {
	b, err := os.ReadFile(adminDoc)
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, line := range strings.Split(string(b), "\n") {
		m := tableRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows++
		cmds := rowCommands(m[1])
		want := map[int]bool{}
		for _, cmd := range cmds {
			docs, ok := exitCodes[cmd]
			if !ok {
				t.Errorf("docs/admin.md lists %q, which exitCodes does not know", cmd)
			}
			for _, d := range docs {
				want[d.code] = true
			}
		}
		got := map[int]bool{}
		for _, part := range strings.Split(m[2], ", ") {
			if n := leadingCode.FindString(part); n != "" {
				code, _ := strconv.Atoi(n)
				got[code] = true
			}
		}
		if !got[exitUsage] {
			t.Errorf("docs/admin.md, %s: exit codes %q leave out 2 (usage)", m[1], m[2])
		}
		delete(got, 0)
		delete(got, exitError)
		delete(got, exitUsage)
		if !maps.Equal(got, want) {
			t.Errorf("docs/admin.md, %s: exit codes %q list %v beyond 2; exitCodes gives %v", m[1], m[2], slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
	}
	if rows < 20 {
		t.Fatalf("docs/admin.md: %d rows of commands found; the table's form changed?", rows)
	}
}

var (
	// tableRow is a row of the commands' table: | `hsmemu CMD` | what | codes |
	tableRow    = regexp.MustCompile("^\\| `hsmemu ([^`]+)` \\| .* \\|\\s*([^|]*?)\\s*\\|$")
	leadingCode = regexp.MustCompile(`^[0-9]\b`)
)

// rowCommands are the commands a row names: "token create\|list" is two,
// "domain leave NODE" is "domain leave".
func rowCommands(s string) []string {
	var words []string
	for _, w := range strings.Fields(s) {
		if strings.ToUpper(w) == w && strings.ToLower(w) != w {
			break // an argument: FILE, NODE
		}
		words = append(words, w)
	}
	last := strings.Split(words[len(words)-1], `\|`)
	var cmds []string
	for _, l := range last {
		cmds = append(cmds, strings.Join(append(slices.Clone(words[:len(words)-1]), l), " "))
	}
	return cmds
}
