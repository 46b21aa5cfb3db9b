package calls

import "testing"

// TestTooLargeNames: every call the table of answers names is a call.
func TestTooLargeNames(t *testing.T) {
	for name := range tooLarge {
		if _, ok := ByName(name); !ok {
			t.Errorf("tooLarge names %s, which is not a call", name)
		}
	}
}
