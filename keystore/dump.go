package keystore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
)

// A keystore dump is hsmemu's own backup format for a keystore in
// PostgreSQL: every row of every keystore table, as stored (sealed
// records, MACs, PIN records, the audit log, the anchor record and its
// entries), read in one snapshot. It is data only: restoring one runs
// this build's schema and inserts the rows, never SQL taken from the
// file. Its checksum catches a file damaged or cut short; it is no seal:
// what protects the rows is what protects them in the database (their
// seals and MACs, and the anchor record that accounts for every row),
// checked when the restored keystore is opened.
//
//	magic "hsmemu-keystore-dump\n" | version u16 (1)
//	| engine str | schema version u32 | domain id bytes | created unix i64
//	| tables u32, each: name str | columns u16, each a str
//	    | identity column str (empty: none) | identity's last value i64
//	    | rows u64, each: one value per column
//	| SHA-256 of everything before it
//
// A str and a bytes are a u32 length and as many bytes; a value is a tag
// byte (0 NULL, 1 integer: i64, 2 bytes, 3 text: str). Integers are big
// endian.

const (
	dumpMagic   = "hsmemu-keystore-dump\n"
	dumpVersion = 1
	// Bounds on what a dump may declare, before anything is allocated.
	dumpMaxTables  = 256
	dumpMaxColumns = 256
	dumpMaxName    = 256
)

// ErrNotDump is ReadDump's error for a file that is not a keystore dump.
var ErrNotDump = errors.New("keystore: not a keystore backup")

// Dump is a keystore's rows as a backup holds them.
type Dump struct {
	Engine        string // the engine it was read from
	SchemaVersion int    // that engine's schema version
	DomainID      []byte
	Created       int64 // unix seconds
	Tables        []DumpTable
}

// DumpTable is one table's rows. A value is nil (NULL), int64, []byte or
// string.
type DumpTable struct {
	Name    string
	Columns []string
	// Identity is the column its database numbers (empty: none), and
	// IdentityLast the last number handed out: a restore hands out none
	// at or below it again.
	Identity     string
	IdentityLast int64
	Rows         [][]any
}

// Table returns the dump's table of that name, or nil.
func (d *Dump) Table(name string) *DumpTable {
	for i := range d.Tables {
		if d.Tables[i].Name == name {
			return &d.Tables[i]
		}
	}
	return nil
}

// dumpWriter writes a dump as it is read, hashing what it writes.
type dumpWriter struct {
	w   *bufio.Writer
	h   hash.Hash
	err error
	buf [9]byte
}

func newDumpWriter(w io.Writer) *dumpWriter {
	h := sha256.New()
	return &dumpWriter{w: bufio.NewWriterSize(io.MultiWriter(w, h), 1<<16), h: h}
}

func (dw *dumpWriter) raw(p []byte) {
	if dw.err == nil {
		_, dw.err = dw.w.Write(p)
	}
}

func (dw *dumpWriter) u8(v byte) { dw.raw([]byte{v}) }
func (dw *dumpWriter) u16(v uint16) {
	binary.BigEndian.PutUint16(dw.buf[:2], v)
	dw.raw(dw.buf[:2])
}
func (dw *dumpWriter) u32(v uint32) {
	binary.BigEndian.PutUint32(dw.buf[:4], v)
	dw.raw(dw.buf[:4])
}
func (dw *dumpWriter) u64(v uint64) {
	binary.BigEndian.PutUint64(dw.buf[:8], v)
	dw.raw(dw.buf[:8])
}

func (dw *dumpWriter) bytes(p []byte) {
	if uint64(len(p)) > math.MaxUint32 {
		dw.err = errors.New("keystore: dump: a value longer than 4 GiB")
		return
	}
	dw.u32(uint32(len(p)))
	dw.raw(p)
}

func (dw *dumpWriter) str(s string) { dw.bytes([]byte(s)) }

func (dw *dumpWriter) header(d *Dump) {
	dw.raw([]byte(dumpMagic))
	dw.u16(dumpVersion)
	dw.str(d.Engine)
	dw.u32(uint32(d.SchemaVersion))
	dw.bytes(d.DomainID)
	dw.u64(uint64(d.Created))
}

func (dw *dumpWriter) tableHead(t *DumpTable, rows uint64) {
	dw.str(t.Name)
	dw.u16(uint16(len(t.Columns)))
	for _, c := range t.Columns {
		dw.str(c)
	}
	dw.str(t.Identity)
	dw.u64(uint64(t.IdentityLast))
	dw.u64(rows)
}

func (dw *dumpWriter) value(v any) {
	switch v := v.(type) {
	case nil:
		dw.u8(0)
	case int64:
		dw.u8(1)
		dw.u64(uint64(v))
	case []byte:
		dw.u8(2)
		dw.bytes(v)
	case string:
		dw.u8(3)
		dw.str(v)
	default:
		if dw.err == nil {
			dw.err = fmt.Errorf("keystore: dump: a value of type %T", v)
		}
	}
}

// finish writes the checksum and flushes.
func (dw *dumpWriter) finish() error {
	if dw.err != nil {
		return dw.err
	}
	if err := dw.w.Flush(); err != nil {
		return err
	}
	_, err := dw.w.Write(dw.h.Sum(nil)) // the sum of what was flushed before it
	if err == nil {
		err = dw.w.Flush()
	}
	return err
}

// WriteTo writes d whole, in the dump format.
func (d *Dump) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	dw := newDumpWriter(cw)
	dw.header(d)
	dw.u32(uint32(len(d.Tables)))
	for i := range d.Tables {
		t := &d.Tables[i]
		dw.tableHead(t, uint64(len(t.Rows)))
		for _, row := range t.Rows {
			if len(row) != len(t.Columns) {
				return cw.n, fmt.Errorf("keystore: dump: a row of %s with %d values for %d columns", t.Name, len(row), len(t.Columns))
			}
			for _, v := range row {
				dw.value(v)
			}
		}
	}
	return cw.n, dw.finish()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadDumpFile reads and checks the dump in a file.
func ReadDumpFile(path string) (*Dump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	return ParseDump(b)
}

// IsDump says whether b begins as a dump does.
func IsDump(b []byte) bool { return bytes.HasPrefix(b, []byte(dumpMagic)) }

// ParseDump checks a dump's checksum and reads it, with a bound on every
// length it declares. A file that is not a dump is ErrNotDump; one that
// is damaged or cut short says so.
func ParseDump(b []byte) (*Dump, error) {
	if !IsDump(b) {
		return nil, ErrNotDump
	}
	if len(b) < len(dumpMagic)+2+sha256.Size {
		return nil, errors.New("keystore: the backup is cut short")
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, errors.New("keystore: the backup is damaged or cut short (its checksum does not match)")
	}
	r := &dumpReader{b: body[len(dumpMagic):]}
	if v := r.u16(); r.err == nil && v != dumpVersion {
		return nil, fmt.Errorf("keystore: a backup of format %d, which this build does not read", v)
	}
	d := &Dump{}
	d.Engine = r.str(dumpMaxName)
	d.SchemaVersion = int(r.u32())
	d.DomainID = r.bytes(1024)
	d.Created = int64(r.u64())
	nt := r.u32()
	if r.err == nil && nt > dumpMaxTables {
		return nil, fmt.Errorf("keystore: the backup declares %d tables", nt)
	}
	for i := uint32(0); i < nt && r.err == nil; i++ {
		var t DumpTable
		t.Name = r.str(dumpMaxName)
		nc := int(r.u16())
		if nc == 0 || nc > dumpMaxColumns {
			r.fail("a table of %d columns", nc)
		}
		for j := 0; j < nc && r.err == nil; j++ {
			t.Columns = append(t.Columns, r.str(dumpMaxName))
		}
		t.Identity = r.str(dumpMaxName)
		t.IdentityLast = int64(r.u64())
		nr := r.u64()
		// Every value takes at least one byte: a count past what is left
		// is a lie, refused before anything is allocated for it.
		if r.err == nil && nr > uint64(len(r.b))/uint64(nc) {
			r.fail("table %s declares %d rows", t.Name, nr)
		}
		for k := uint64(0); k < nr && r.err == nil; k++ {
			row := make([]any, nc)
			for j := range row {
				row[j] = r.value()
			}
			t.Rows = append(t.Rows, row)
		}
		d.Tables = append(d.Tables, t)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after its last table", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("keystore: the backup is malformed: %w", r.err)
	}
	return d, nil
}

type dumpReader struct {
	b   []byte
	err error
}

func (r *dumpReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *dumpReader) take(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("cut short")
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *dumpReader) u8() byte {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *dumpReader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *dumpReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *dumpReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// bytes reads a length and that many bytes, copied, at most max
// (0: no bound beyond what is left).
func (r *dumpReader) bytes(max uint32) []byte {
	n := r.u32()
	if max > 0 && n > max {
		r.fail("a field of %d bytes", n)
		return nil
	}
	p := r.take(uint64(n))
	if r.err != nil {
		return nil
	}
	return append([]byte{}, p...)
}

func (r *dumpReader) str(max uint32) string { return string(r.bytes(max)) }

func (r *dumpReader) value() any {
	switch tag := r.u8(); tag {
	case 0:
		return nil
	case 1:
		return int64(r.u64())
	case 2:
		return r.bytes(0)
	case 3:
		return r.str(0)
	default:
		r.fail("a value tagged %d", tag)
		return nil
	}
}
