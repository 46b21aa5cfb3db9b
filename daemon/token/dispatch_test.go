package token

import (
	"maps"
	"testing"

	"hsmemu/cryptoki/calls"
)

// TestDispatchTable walks the call table: every call the module forwards
// has a handler, and nothing else has one.
func TestDispatchTable(t *testing.T) {
	t.Parallel()
	if len(handlers) != len(calls.Table)+1 {
		t.Fatalf("%d handlers for %d calls", len(handlers)-1, len(calls.Table))
	}
	forwarded := 0
	for i := range calls.Table {
		c := &calls.Table[i]
		has := handlers[c.ID] != nil
		if c.Mode == calls.Forwarded {
			forwarded++
		}
		if has != (c.Mode == calls.Forwarded) {
			t.Errorf("%s (mode %d): handler present = %v", c.Name, c.Mode, has)
		}
	}
	if forwarded != len(handlerOf) {
		t.Errorf("%d forwarded calls, %d named handlers", forwarded, len(handlerOf))
	}
}

// TestDispatchTableRefusesMistakes: a handler under a name the module does
// not forward, or a forwarded call without one, stops the build of the
// table.
func TestDispatchTableRefusesMistakes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		edit func(m map[string]handler)
	}{
		{name: "misspelt", edit: func(m map[string]handler) { m["C_Sing"] = m["C_Sign"] }},
		{name: "local call", edit: func(m map[string]handler) { m["C_GetInfo"] = notSupported }},
		{name: "missing", edit: func(m map[string]handler) { delete(m, "C_Sign") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := maps.Clone(handlerOf)
			c.edit(m)
			defer func() {
				if recover() == nil {
					t.Error("buildHandlers accepted the table")
				}
			}()
			buildHandlers(m)
		})
	}
}
