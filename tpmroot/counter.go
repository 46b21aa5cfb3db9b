package tpmroot

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// The anchor counter. A keystore is a file, and a file can be put back as
// it was yesterday; the TPM's NV counters are the one thing here that only
// ever goes up. The keystore records the counter's value it was anchored
// at, the daemon increments the counter when it anchors, and a keystore
// that recorded less than the counter holds is an older copy
// (docs/keychain.md, "Rollback").
//
// The counter is an NV index of type TPM_NT_COUNTER in the owner
// hierarchy: the TPM only ever increments it (TPM2_NV_Increment), never
// writes, decrements or resets it, and a counter defined again after
// being deleted starts no lower than the highest value any counter of
// this TPM has held. Its attributes:
//
//   - AUTHWRITE | AUTHREAD with an authorisation value the keystore
//     derives from its domain's keys: only the daemon increments it, and
//     each read proves the index is the one we defined, not another one
//     with the same public area;
//   - OWNERREAD, so an administrator can read its value (tpm2_nvread -C o);
//     not OWNERWRITE: the owner cannot increment it;
//   - NO_DA: the authorisation value is 32 random-looking bytes with
//     nothing to guess, and a garbled session must not count towards the
//     TPM's dictionary-attack lockout;
//   - not ORDERLY: an orderly ("hybrid") counter lives in RAM and, after a
//     power loss, jumps ahead, which would make the keystore look
//     rolled back. So every increment is an NV write, and the daemon
//     increments at most once per anchor interval.
//
// This package can define a counter, read it and increment it. It cannot
// write, undefine or redefine one: there is no such method.

// ErrNoCounter is returned by OpenCounter when the TPM holds no NV index
// at the handle.
var ErrNoCounter = errors.New("tpmroot: the TPM holds no anchor counter at that NV index")

// ErrCounterExists is returned by DefineCounter when the handle is taken.
var ErrCounterExists = errors.New("tpmroot: the NV index is already defined")

// ErrForeignIndex is returned when the NV index at the handle is not a
// counter as DefineCounter makes them: another program's index.
var ErrForeignIndex = errors.New("tpmroot: the NV index is not an hsmemu anchor counter")

// ErrCounterAuth is returned when the counter refuses our authorisation:
// it is not the counter this keystore defined (someone deleted it and
// defined another with the same attributes), or the keystore is another
// domain's.
var ErrCounterAuth = errors.New("tpmroot: the anchor counter does not accept this keystore's authorisation")

// ErrNVRate is returned (wrapped) by Increment when the TPM is rate
// limiting NV writes to spare its memory (TPM_RC_NV_RATE); try later.
var ErrNVRate = errors.New("tpmroot: the TPM is rate limiting NV writes")

// anchorIndexFirst and anchorIndexMask place anchor counters in the TCG's
// range for owner-defined NV indexes, 0x01000000 to 0x013FFFFF.
const (
	anchorIndexFirst = 0x01000000
	anchorIndexMask  = 0x003FFFFF
)

// AnchorHandle is the NV index of a domain's anchor counter: a handle in
// the owner range derived from the domain id, so keystores of different
// domains on one TPM (and other software, most likely) do not collide,
// and the handle is found again without reading anything the database
// could lie about.
func AnchorHandle(domainID []byte) uint32 {
	h := sha256.Sum256(append([]byte("hsmemu/anchor-index/v1\x00"), domainID...))
	return anchorIndexFirst | binary.BigEndian.Uint32(h[:4])&anchorIndexMask
}

// ValidAnchorHandle reports whether h is in the range AnchorHandle uses.
func ValidAnchorHandle(h uint32) bool { return h&^anchorIndexMask == anchorIndexFirst }

// counterPublic is the public area of an anchor counter at handle.
func counterPublic(handle uint32) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(handle),
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthWrite: true,
			AuthRead:  true,
			OwnerRead: true,
			NT:        tpm2.TPMNTCounter,
			NoDA:      true,
		},
		DataSize: 8,
	}
}

// A Counter is an anchor counter in the TPM, opened with its
// authorisation value. Its methods share the TPM's lock.
type Counter struct {
	t      *TPM
	handle tpm2.TPMHandle
	auth   []byte
}

// Handle is the counter's NV index.
func (c *Counter) Handle() uint32 { return uint32(c.handle) }

// DefineCounter defines an anchor counter at handle with authorisation
// auth (at most 32 bytes). The counter has no value until its first
// Increment. A handle already taken gives ErrCounterExists, and nothing
// is changed.
func (t *TPM) DefineCounter(handle uint32, auth []byte) (*Counter, error) {
	if !ValidAnchorHandle(handle) {
		return nil, fmt.Errorf("tpmroot: NV index 0x%08x is outside the owner range anchor counters use", handle)
	}
	if len(auth) == 0 || len(auth) > sha256.Size {
		return nil, fmt.Errorf("tpmroot: an anchor counter's authorisation is 1 to %d bytes, not %d", sha256.Size, len(auth))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	// The authorisation value goes in encrypted, in a session salted with
	// the SRK; the owner's authorisation is the empty one.
	_, err := tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: t.srk.secretIn()},
		Auth:       tpm2.TPM2BAuth{Buffer: authValue(auth)},
		PublicInfo: tpm2.New2B(counterPublic(handle)),
	}.Execute(t.tpm)
	switch {
	case errors.Is(err, tpm2.TPMRCNVDefined):
		return nil, fmt.Errorf("%w: 0x%08x", ErrCounterExists, handle)
	case errors.Is(err, tpm2.TPMRCNVSpace):
		return nil, fmt.Errorf("tpmroot: defining the anchor counter 0x%08x: the TPM's NV memory is full: %w", handle, err)
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		return nil, fmt.Errorf("tpmroot: defining the anchor counter: the TPM's owner hierarchy has a password; hsmemu needs the empty owner authorisation: %w", err)
	case err != nil:
		return nil, fmt.Errorf("tpmroot: defining the anchor counter 0x%08x (TPM2_NV_DefineSpace): %w", handle, err)
	}
	return &Counter{t: t, handle: tpm2.TPMHandle(handle), auth: authValue(auth)}, nil
}

// OpenCounter opens the anchor counter at handle. No index there gives
// ErrNoCounter; an index that is not an anchor counter, ErrForeignIndex.
// Whether auth is the counter's shows at the first Value or Increment.
func (t *TPM) OpenCounter(handle uint32, auth []byte) (*Counter, error) {
	if !ValidAnchorHandle(handle) {
		return nil, fmt.Errorf("tpmroot: NV index 0x%08x is outside the owner range anchor counters use", handle)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	c := &Counter{t: t, handle: tpm2.TPMHandle(handle), auth: authValue(auth)}
	if _, _, err := c.publicLocked(); err != nil {
		return nil, err
	}
	return c, nil
}

// publicLocked reads the counter's public area and name, and checks that
// it is an anchor counter. t.mu is held.
func (c *Counter) publicLocked() (*tpm2.TPMSNVPublic, tpm2.TPM2BName, error) {
	if c.t.closed {
		return nil, tpm2.TPM2BName{}, ErrClosed
	}
	rsp, err := tpm2.NVReadPublic{NVIndex: c.handle}.Execute(c.t.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("%w (0x%08x)", ErrNoCounter, uint32(c.handle))
	}
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("tpmroot: reading NV index 0x%08x (TPM2_NV_ReadPublic): %w", uint32(c.handle), err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("tpmroot: NV index 0x%08x: %w", uint32(c.handle), err)
	}
	want := counterPublic(uint32(c.handle))
	got := *pub
	got.Attributes.Written = false
	if got.NVIndex != want.NVIndex || got.NameAlg != want.NameAlg || got.Attributes != want.Attributes ||
		len(got.AuthPolicy.Buffer) != 0 || got.DataSize != want.DataSize {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("%w: 0x%08x has attributes %#x", ErrForeignIndex, uint32(c.handle), tpm2.Marshal(pub.Attributes))
	}
	name, err := tpm2.NVName(pub)
	if err != nil || string(name.Buffer) != string(rsp.NVName.Buffer) {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("tpmroot: NV index 0x%08x: the TPM returned a name that does not match the public area", uint32(c.handle))
	}
	return pub, rsp.NVName, nil
}

// session authorises a command on the counter with its authorisation
// value, in a session salted with the SRK.
func (c *Counter) session() tpm2.Session {
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(c.auth), tpm2.Salted(c.t.srk.handle, c.t.srk.public))
}

// authErr maps an authorisation failure onto ErrCounterAuth.
func (c *Counter) authErr(what string, err error) error {
	if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
		return fmt.Errorf("%w (0x%08x): %w", ErrCounterAuth, uint32(c.handle), err)
	}
	return fmt.Errorf("tpmroot: %s the anchor counter 0x%08x: %w", what, uint32(c.handle), err)
}

// Value returns the counter's value, and false for a counter never
// incremented, which has none.
func (c *Counter) Value() (uint64, bool, error) {
	c.t.mu.Lock()
	defer c.t.mu.Unlock()
	pub, name, err := c.publicLocked()
	if err != nil {
		return 0, false, err
	}
	if !pub.Attributes.Written {
		return 0, false, nil
	}
	rsp, err := tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: c.handle, Name: name, Auth: c.session()},
		NVIndex:    tpm2.NamedHandle{Handle: c.handle, Name: name},
		Size:       8,
	}.Execute(c.t.tpm)
	if err != nil {
		return 0, false, c.authErr("reading", err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, false, fmt.Errorf("tpmroot: the anchor counter 0x%08x read %d bytes, want 8", uint32(c.handle), len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), true, nil
}

// Increment adds one to the counter and returns its new value. The first
// increment of a new counter gives it its first value, which the TPM
// chooses (no lower than any counter it has held). A TPM rate limiting
// its NV writes gives an error wrapping ErrNVRate.
func (c *Counter) Increment() (uint64, error) {
	c.t.mu.Lock()
	defer c.t.mu.Unlock()
	_, name, err := c.publicLocked()
	if err != nil {
		return 0, err
	}
	_, err = tpm2.NVIncrement{
		AuthHandle: tpm2.AuthHandle{Handle: c.handle, Name: name, Auth: c.session()},
		NVIndex:    tpm2.NamedHandle{Handle: c.handle, Name: name},
	}.Execute(c.t.tpm)
	if errors.Is(err, tpm2.TPMRCNVRate) {
		return 0, fmt.Errorf("%w: %w", ErrNVRate, err)
	}
	if err != nil {
		return 0, c.authErr("incrementing", err)
	}
	// The name changed with the written bit after the first increment.
	_, name, err = c.publicLocked()
	if err != nil {
		return 0, err
	}
	rsp, err := tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: c.handle, Name: name, Auth: c.session()},
		NVIndex:    tpm2.NamedHandle{Handle: c.handle, Name: name},
		Size:       8,
	}.Execute(c.t.tpm)
	if err != nil {
		return 0, c.authErr("reading", err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, fmt.Errorf("tpmroot: the anchor counter 0x%08x read %d bytes, want 8", uint32(c.handle), len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}
