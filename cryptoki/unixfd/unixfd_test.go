package unixfd

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The duplicate blocks, is close-on-exec, works after the connection is
// closed, and is not watched by the runtime's epoll descriptor (which
// would show it in /proc/self/fdinfo).
func TestDupBlocking(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	}()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := DupBlocking(c)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	c.Close()

	fl, err := fcntl(fd, syscall.F_GETFL)
	if err != nil || fl&syscall.O_NONBLOCK != 0 {
		t.Fatalf("flags %#x, %v: not blocking", fl, err)
	}
	if fdfl, err := fcntl(fd, syscall.F_GETFD); err != nil || fdfl&syscall.FD_CLOEXEC == 0 {
		t.Fatalf("fd flags %#x, %v: not close-on-exec", fdfl, err)
	}
	if _, err := syscall.Write(fd, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if n, err := syscall.Read(fd, buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if watched(t, fd) {
		t.Fatalf("descriptor %d is registered with the runtime's epoll", fd)
	}
}

func fcntl(fd, cmd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// watched reports whether any epoll descriptor of this process lists fd.
func watched(t *testing.T, fd int) bool {
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Skip("no /proc/self/fdinfo")
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "tfd:" && f[1] == itoa(fd) {
				return true
			}
		}
	}
	return false
}

func itoa(n int) string { return strconv.Itoa(n) }

// FD reads and writes whole, and a closed peer reads as io.EOF.
func TestFDReadWrite(t *testing.T) {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := FD(pair[0]), FD(pair[1])
	defer syscall.Close(int(a))
	msg := bytes.Repeat([]byte("x"), 100000) // more than one write's worth
	go func() {
		b.Write(msg)
		syscall.Close(int(b))
	}()
	got, err := io.ReadAll(a)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, %v; want %d", len(got), err, len(msg))
	}
	if n, err := a.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("after close: %d, %v; want io.EOF", n, err)
	}
}
