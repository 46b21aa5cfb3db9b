package bench

import (
	"fmt"
	"io"
	"os"
	"time"
)

// progress shows, on a terminal only, which cell is being measured and
// how far the whole run is.
type progress struct {
	w     io.Writer
	total int
	done  int
	start time.Time
}

// IsTerminal reports whether w is a terminal, where a progress line that
// rewrites itself makes sense.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newProgress(w io.Writer, total int) *progress {
	return &progress{w: w, total: total, start: time.Now()}
}

func (p *progress) step(what string) {
	if p.w == nil {
		return
	}
	p.done++
	fmt.Fprintf(p.w, "\r\033[K[%d/%d %s] %s", p.done, p.total, time.Since(p.start).Round(time.Second), what)
}

func (p *progress) finish() {
	if p.w != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
