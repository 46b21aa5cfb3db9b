package token

import (
	"os"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// An application started afresh numbers its handles from its hello's
// epoch, so the handles of its earlier life (before a restart of the
// daemon, or after every connection broke) stay invalid even once the new
// life has opened as many sessions and found as many objects.
func TestHandlesOfAnEarlierLifeStayInvalid(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	id := AppID{0xe0}
	attach := func(epoch uint32) (*App, *client) {
		app, fresh, ok := d.eng.AttachScoped(id, int32(os.Getpid()), uint32(os.Getuid()), nil, epoch)
		if !ok || !fresh {
			t.Fatalf("attach with epoch %d: ok %v, fresh %v", epoch, ok, fresh)
		}
		return app, &client{Client: NewClient(t, &inProcess{eng: d.eng, app: app, res: &wire.Results{}})}
	}

	app, cl := attach(0)
	slot := cl.NewToken("epochs")
	h := cl.Open(slot, true)
	if h>>32 != 0 {
		t.Fatalf("epoch 0: session handle %#x, want the handles from 1", h)
	}
	obj := cl.Create(h, DataObject("kept", true, false, "v")...)
	d.eng.Detach(app) // the application's last connection: it ends

	app, cl = attach(7)
	defer d.eng.Detach(app)
	var hs []uint64
	for range 3 {
		hs = append(hs, cl.Open(slot, true))
	}
	found := cl.Find(hs[0], AU(ck.CKA_CLASS, ck.CKO_DATA))
	if len(found) != 1 {
		t.Fatalf("found %d data objects, want 1", len(found))
	}
	for _, nh := range append(hs, found...) {
		if nh>>32 != 7 || nh == h || nh == obj {
			t.Fatalf("epoch 7 handed out %#x (old session %#x, old object %#x)", nh, h, obj)
		}
	}
	cl.Must(ck.CKR_SESSION_HANDLE_INVALID, "C_GetSessionInfo", U(h), None())
	cl.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(hs[0]), U(obj), Q(wire.Query{Type: ck.CKA_LABEL}))
}
