package cli

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// The metrics and the profiler are served over HTTP by the daemon that
// holds the keys, and --metrics may listen on TCP, where any host that
// reaches the port may connect. A connection is a file descriptor of that
// process, which the module's connections and the keystore need too:
// an idle one is closed (obsIdleTimeout), and past obsMaxConns at once
// a new one is closed as soon as it is accepted.

const (
	obsIdleTimeout = time.Minute
	obsMaxConns    = 32
)

// obsServer is the HTTP server of --metrics and --pprof.
func obsServer(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle}
}

// capListener closes a connection accepted while max are open.
type capListener struct {
	net.Listener
	mu   sync.Mutex
	open int
	max  int
}

func capConns(ln net.Listener, max int) net.Listener { return &capListener{Listener: ln, max: max} }

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		over := l.open >= l.max
		if !over {
			l.open++
		}
		l.mu.Unlock()
		if over {
			c.Close()
			continue
		}
		return &cappedConn{Conn: c, l: l}, nil
	}
}

type cappedConn struct {
	net.Conn
	l    *capListener
	once sync.Once
}

func (c *cappedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
