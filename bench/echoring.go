package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/shmring"
	"hsmemu/cryptoki/unixfd"
)

// The ring floor: the socket floor's request and reply, carried by the
// shared-memory rings the module uses by default (docs/protocol.md,
// "Rings"). The client makes the memfd, passes it over the socket and
// from then on the frames travel through the rings, the socket serving
// only for liveness, as between the module and the daemon. Both ends here
// are Go (cryptoki/shmring); the module's end is C, with the same
// futexes and the same counters.
const (
	// echoRing, then the socket, as echoEnv's value makes the server a
	// ring one.
	echoRing = "ring:"
	// echoRingSize is each ring's size, the module's (ring.c RING_SIZE).
	echoRingSize = 32 << 10
)

// serveEchoRing accepts the one connection on sock, takes the rings it
// offers (a 4-byte size with the memfd beside it) and answers every
// request on them until the client goes.
func serveEchoRing(sock string) error {
	fd, err := acceptEcho(sock)
	if err != nil {
		return err
	}
	defer fd.Close()
	size := make([]byte, 4)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd.fd, size, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return fmt.Errorf("ring offer: %w", err)
	}
	fds := unixfd.ReceivedFDs(oob[:oobn])
	defer func() {
		for _, f := range fds {
			unix.Close(f)
		}
	}()
	if n != len(size) || len(fds) != 1 {
		return fmt.Errorf("ring offer: %d bytes and %d descriptors, want 4 and 1", n, len(fds))
	}
	ring, err := shmring.Open(fds[0], binary.BigEndian.Uint32(size))
	if err != nil {
		return err
	}
	defer ring.Close()
	ring.Watch(fd.fd)
	req, rep := make([]byte, echoRequest), make([]byte, echoReply)
	for n := 1; ; n++ {
		if n%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		if _, err := io.ReadFull(ring, req); err != nil {
			return nil // the client went: done
		}
		if _, err := ring.Write(rep); err != nil {
			return nil
		}
	}
}

// startEchoRing starts a ring echo server listening on sock, connects and
// offers it the rings.
func startEchoRing(sock string) (_ *echoClient, err error) {
	e, err := startEchoAs(echoRing+sock, sock)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	ring, memfd, err := shmring.NewClient(echoRingSize)
	if err != nil {
		return nil, err
	}
	defer unix.Close(memfd)
	size := binary.BigEndian.AppendUint32(nil, echoRingSize)
	if err := unix.Sendmsg(e.fd.fd, size, unix.UnixRights(memfd), nil, 0); err != nil {
		ring.Close()
		return nil, fmt.Errorf("ring offer: %w", err)
	}
	ring.Watch(e.fd.fd)
	e.ring = ring
	return e, nil
}

// ringTrips makes n round trips through the rings.
func (e *echoClient) ringTrips(n int, req, rep []byte) error {
	for i := 1; i <= n; i++ {
		if i%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		if _, err := e.ring.Write(req); err != nil {
			return fmt.Errorf("ring echo: write: %w", err)
		}
		if _, err := io.ReadFull(e.ring, rep); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("ring echo: the server went: %s", e.errs.String())
			}
			return fmt.Errorf("ring echo: read: %w", err)
		}
	}
	return nil
}
