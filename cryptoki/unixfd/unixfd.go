// Package unixfd turns a Unix socket connection into a plain blocking
// descriptor, for request and reply loops that want one read and one write
// per call and nothing of the runtime's network poller, and reads the
// descriptors a message brought.
package unixfd

import (
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReceivedFDs returns the descriptors SCM_RIGHTS brought in oob, all of
// them, for the caller to close.
func ReceivedFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// DupBlocking duplicates c's descriptor (close-on-exec) and puts it in
// blocking mode; the caller closes c next and owns the duplicate.
//
// The duplicate is made with fcntl inside SyscallConn().Control, not with
// UnixConn.File: File's duplicate is registered with the runtime's poller
// (edge-triggered, for reading and writing, until closed), so every
// request and every reply would wake an idle scheduler thread for nothing,
// which doubled a round trip on a two-core machine. Blocking mode belongs
// to the open file, which c shares, hence closing c at once.
func DupBlocking(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			derr = errno
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("duplicate connection descriptor: %w", derr)
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// FD is a blocking descriptor as an io.Reader and io.Writer: each call one
// system call (or a few, for a write the kernel takes in parts), retried
// when a signal interrupts it.
type FD int

// Read reads what is there, at most len(p); a closed peer is io.EOF.
func (fd FD) Read(p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes all of p.
func (fd FD) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Write(int(fd), p[done:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}
