package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/shmring"
	"hsmemu/cryptoki/unixfd"
	"hsmemu/cryptoki/wire"
)

// A module that set wire.Hello.Ring offers its rings next
// (docs/protocol.md, "Rings"). The offer arrives on the connection whose
// peer the hello checked, so it is that process's (or one it gave its
// socket to, which could as well make its calls). The rings are charged
// to the budgets for the connection's life, the request ring and the
// control page to the requests' half, the reply ring to the replies': a
// daemon whose budget cannot hold them now declines, and the socket
// carries the frames.

// offerLen is the offer frame: length, request id, call, size, reserved.
const offerLen = 20

// takeRing reads the ring offer and answers it, within the hello's read
// deadline. A nil ring with a nil
// error is a declined offer; an error ends the connection (the offer did
// not come, or was not one).
func (s *Server) takeRing(c *net.UnixConn, pid int32) (*shmring.Ring, func(), error) {
	buf := make([]byte, offerLen)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	fds := unixfd.ReceivedFDs(oob[:oobn])
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if n < offerLen {
		if _, err := io.ReadFull(c, buf[n:]); err != nil {
			return nil, nil, err
		}
	}
	if binary.BigEndian.Uint32(buf) != offerLen-4 || binary.BigEndian.Uint32(buf[4:]) != 0 ||
		binary.BigEndian.Uint32(buf[8:]) != wire.RingCall || binary.BigEndian.Uint32(buf[16:]) != 0 {
		return nil, nil, errors.New("ring offer malformed")
	}
	size := binary.BigEndian.Uint32(buf[12:])
	ring, release, why := s.openRing(fds, size)
	rv := uint64(ck.CKR_OK)
	if ring == nil {
		rv = ck.CKR_FUNCTION_NOT_SUPPORTED
		s.log.Debug("ring declined", "pid", pid, "why", why)
	}
	reply := binary.BigEndian.AppendUint32(nil, 13)
	reply = binary.BigEndian.AppendUint32(reply, 0)
	reply = binary.BigEndian.AppendUint64(reply, rv)
	reply = append(reply, 0)
	if _, err := c.Write(reply); err != nil {
		if ring != nil {
			ring.Close()
			release()
		}
		return nil, nil, err
	}
	return ring, release, nil
}

// openRing checks and maps the offered memfd, within the budgets.
func (s *Server) openRing(fds []int, size uint32) (*shmring.Ring, func(), string) {
	if s.cfg.NoRings {
		return nil, nil, "rings turned off"
	}
	if len(fds) != 1 {
		return nil, nil, fmt.Sprintf("%d descriptors with the offer, want 1", len(fds))
	}
	if size < shmring.MinSize || size > shmring.MaxSize {
		return nil, nil, "ring size out of range"
	}
	reqs, reps := int64(shmring.Ctrl)+int64(size), int64(size)
	if !s.lim.requests.TryAcquire(reqs) {
		return nil, nil, "no room in the requests' budget"
	}
	if !s.lim.replies.TryAcquire(reps) {
		s.lim.requests.Release(reqs)
		return nil, nil, "no room in the replies' budget"
	}
	release := func() {
		s.lim.requests.Release(reqs)
		s.lim.replies.Release(reps)
	}
	ring, err := shmring.Open(fds[0], size)
	if err != nil {
		release()
		return nil, nil, err.Error()
	}
	return ring, release, ""
}
