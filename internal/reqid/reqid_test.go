package reqid

import (
	"context"
	"testing"
)

func TestSlot(t *testing.T) {
	t.Parallel()
	if From(context.Background()) != "" {
		t.Fatal("an id without one given")
	}
	if a, b := Ensure(context.Background()), Ensure(context.Background()); a == b || len(a) != 16 {
		t.Fatalf("ids without a slot: %q, %q", a, b)
	}
	ctx, s := WithSlot(context.Background())
	if From(ctx) != "" {
		t.Fatal("a new slot holds an id")
	}
	id := Ensure(ctx)
	if Ensure(ctx) != id || From(ctx) != id {
		t.Fatal("a slot's id changed within a call")
	}
	s.Reset()
	if From(ctx) != "" || Ensure(ctx) == id {
		t.Fatal("the next call kept the last one's id")
	}
	if From(With(ctx, "abc")) != "abc" {
		t.Fatal("With")
	}
}
