package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// baselineOf returns the baseline module's name: Report.Modules lists it
// first.
func baselineOf(rep *Report) string {
	if len(rep.Modules) == 0 {
		return ""
	}
	return rep.Modules[0]
}

// orderedResults returns rep's results grouped the way a reader compares them:
// by op (in the order the ops were first run), then by concurrency
// (ascending), then by module in the order of rep.Modules, so that each
// module's row sits right under the baseline's. Modules missing from
// rep.Modules come last, in their order of appearance.
func orderedResults(rep *Report) []Result {
	opIdx := map[string]int{}
	modIdx := map[string]int{}
	for i, m := range rep.Modules {
		if _, ok := modIdx[m]; !ok {
			modIdx[m] = i
		}
	}
	for _, r := range rep.Results {
		if _, ok := opIdx[r.id()]; !ok {
			opIdx[r.id()] = len(opIdx)
		}
		if _, ok := modIdx[r.Module]; !ok {
			modIdx[r.Module] = len(modIdx) + len(rep.Modules)
		}
	}
	rs := append([]Result(nil), rep.Results...)
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.id() != b.id() {
			return opIdx[a.id()] < opIdx[b.id()]
		}
		if a.Concurrency != b.Concurrency {
			return a.Concurrency < b.Concurrency
		}
		return modIdx[a.Module] < modIdx[b.Module]
	})
	return rs
}

// sig3 formats x with three significant digits (x >= 0, below 1000 after
// the caller's choice of unit).
func sig3(x float64) string {
	switch {
	case x == 0:
		return "0"
	case x >= 99.95:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 9.995:
		return strconv.FormatFloat(x, 'f', 1, 64)
	default:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
}

// fmtScaled formats x with three significant digits in the largest unit that
// keeps it from rounding up to 1000; units[i] is worth 1000^i.
func fmtScaled(x float64, units []string) string {
	i := 0
	for i < len(units)-1 && math.Abs(x) >= 999.5 {
		x /= 1000
		i++
	}
	if x < 0 {
		return "-" + sig3(-x) + units[i]
	}
	return sig3(x) + units[i]
}

// fmtDuration shows a latency in ns/us/ms/s with three significant digits,
// the precision the histogram can vouch for.
func fmtDuration(d time.Duration) string {
	// Past 999s the units run out and sig3 prints whole seconds: "3600s".
	return fmtScaled(float64(d), []string{"ns", "us", "ms", "s"})
}

// fmtRate shows an ops/s figure with three significant digits: 19.4k.
func fmtRate(x float64) string {
	return fmtScaled(x, []string{"", "k", "M", "G", "T"})
}

// tableNote is the table's last column: what a reader needs to know about the row.
func tableNote(r Result) string {
	switch r.Status {
	case "ok":
		var parts []string
		if r.Mechanism != "" {
			parts = append(parts, r.Mechanism)
		}
		if r.FloorRatio > 0 {
			floor := [...]string{floorSocket: "socket floor", floorRing: "ring floor", floorTLS: "TLS floor"}[floorOf(&r)]
			parts = append(parts, fmt.Sprintf("p50 %.2fx %s", r.FloorRatio, floor))
		}
		if r.TLSRatio > 0 {
			parts = append(parts, fmt.Sprintf("p50 %.2fx socket's + floor gap", r.TLSRatio))
		}
		if r.BareRatio > 0 {
			parts = append(parts, fmt.Sprintf("p50 %.2fx bare call + round trip", r.BareRatio))
		}
		return strings.Join(parts, ", ")
	case "unsupported":
		return "unsupported: " + r.Reason
	case "failed":
		return "FAILED: " + r.Reason
	}
	return r.Status + ": " + r.Reason
}

// tableCell keeps a cell from breaking the table: tabwriter treats tabs and
// newlines in text as cell and row ends.
func tableCell(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

// trailingSpace matches the padding tabwriter leaves before a line end.
var trailingSpace = regexp.MustCompile(` +\n`)

// WriteTable writes rep as a table for people: a header saying what was
// measured and on what, what "x floor" means, and what was set up first;
// then one row per op x concurrency x module.
func WriteTable(w io.Writer, rep *Report) error {
	base := baselineOf(rep)
	var b bytes.Buffer
	fmt.Fprintf(&b, "host: %s  cpus: %d  runs: %d  duration: %s per measurement\n",
		tableCell(rep.Host), rep.CPUs, rep.Runs, rep.Duration)
	mods := make([]string, len(rep.Modules))
	for i, m := range rep.Modules {
		mods[i] = tableCell(m)
		if i == 0 {
			mods[i] += " (baseline)"
		}
	}
	fmt.Fprintf(&b, "modules: %s\n", strings.Join(mods, ", "))
	if len(rep.Conventions) > 0 {
		fmt.Fprintf(&b, "keys: %s objects; output calls: %s (%s: a buffer large enough, one call; %s: a NULL buffer for the length first, then the call)\n",
			rep.Keys, strings.Join(rep.Conventions, " and "), OneCall, TwoCall)
	}
	if f := rep.Floor; f != nil && f.Status == "ok" {
		fmt.Fprintf(&b, "socket floor: a bare Unix-socket round trip to another process, p50 %s, p99 %s (%s/s)\n",
			fmtDuration(time.Duration(f.P50)), fmtDuration(time.Duration(f.P99)), fmtRate(f.OpsPerS))
	}
	if f := rep.RingFloor; f != nil && f.Status == "ok" {
		fmt.Fprintf(&b, "ring floor: the same through shared-memory rings (the module's default transport), p50 %s, p99 %s (%s/s)\n",
			fmtDuration(time.Duration(f.P50)), fmtDuration(time.Duration(f.P99)), fmtRate(f.OpsPerS))
	}
	if rep.Floor != nil && rep.Floor.Status == "ok" {
		fmt.Fprintln(&b, `"x floor": an op's p50 over its transport's floor times the PKCS#11 calls it makes (1.00x: each call costs a bare round trip)`)
	}
	// What was set up before measuring, before what was measured.
	if len(rep.Setup) > 0 {
		fmt.Fprintln(&b, "setup:")
		for _, s := range rep.Setup {
			fmt.Fprintf(&b, "  %s: %s took %s\n", tableCell(s.Module),
				tableCell(s.What), fmtDuration(time.Duration(s.Took)))
		}
	}
	if f := rep.TLSFloor; f != nil && f.Status == "ok" {
		fmt.Fprintf(&b, "TLS floor: the same over TLS 1.3 on loopback TCP, p50 %s, p99 %s (%s/s)\n",
			fmtDuration(time.Duration(f.P50)), fmtDuration(time.Duration(f.P99)), fmtRate(f.OpsPerS))
	}
	for _, r := range rep.Bare {
		if r.Status == "ok" {
			fmt.Fprintf(&b, "bare: %s's library call in this process, p50 %s, p99 %s (%s/s)\n", tableCell(r.Op),
				fmtDuration(time.Duration(r.P50)), fmtDuration(time.Duration(r.P99)), fmtRate(r.OpsPerS))
		} else {
			fmt.Fprintf(&b, "bare: %s's library call %s: %s\n", tableCell(r.Op), r.Status, tableCell(r.Reason))
		}
	}
	fmt.Fprintln(&b)

	var tb bytes.Buffer
	tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "op\tconc\tmodule\tops/s (min-max)\tp50\tp99\tratio\tnote")
	for _, r := range orderedResults(rep) {
		var rate, p50, p99, ratio string
		if r.Status == "ok" {
			rate = fmt.Sprintf("%s (%s-%s)", fmtRate(r.OpsPerS),
				fmtRate(r.OpsPerSMin), fmtRate(r.OpsPerSMax))
			p50 = fmtDuration(time.Duration(r.P50))
			p99 = fmtDuration(time.Duration(r.P99))
			if r.Ratio != 0 && r.Module != base {
				ratio = fmt.Sprintf("%.2fx", r.Ratio)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", tableCell(r.id()),
			r.Concurrency, tableCell(r.Module), rate, p50, p99, ratio,
			tableCell(tableNote(r)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// tabwriter pads empty trailing cells; drop the padding so lines do
	// not end in spaces.
	b.Write(trailingSpace.ReplaceAll(tb.Bytes(), []byte("\n")))
	_, err := w.Write(b.Bytes())
	return err
}

// String shows m as microseconds with up to three decimals (whole
// nanoseconds), the form used in JSON and CSV.
func (m Micros) String() string {
	ns := int64(m)
	sign := ""
	u := uint64(ns)
	if ns < 0 {
		sign = "-"
		u = uint64(-ns) // -MinInt64 wraps to itself, which as uint64 is right
	}
	s := sign + strconv.FormatUint(u/1000, 10)
	if frac := u % 1000; frac != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%03d", frac), "0")
	}
	return s
}

// MarshalJSON encodes m as a number of microseconds, exact to the
// nanosecond, so the JSON reads the same way as the table.
func (m Micros) MarshalJSON() ([]byte, error) {
	return []byte(m.String()), nil
}

// UnmarshalJSON reads a number of microseconds, rounding to the
// nanosecond. null leaves m unchanged, as encoding/json does.
func (m *Micros) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("bench: microseconds %s: %w", b, err)
	}
	ns := math.Round(f * 1000)
	if math.IsNaN(ns) || ns >= math.MaxInt64 || ns < math.MinInt64 {
		return fmt.Errorf("bench: microseconds %s out of range", b)
	}
	*m = Micros(ns)
	return nil
}

// reportFields has Report's fields without its methods, so that
// MarshalJSON and UnmarshalJSON can use the default encoding for them
// without recursing.
type reportFields Report

// reportJSON is Report on the wire: Duration (json:"-" in Report, since
// time.Duration would encode as nanoseconds) travels as duration_s.
type reportJSON struct {
	*reportFields
	DurationS float64 `json:"duration_s"`
}

// MarshalJSON encodes rep with its duration as duration_s, in seconds.
func (rep Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(reportJSON{
		reportFields: (*reportFields)(&rep),
		DurationS:    rep.Duration.Seconds(),
	})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (rep *Report) UnmarshalJSON(b []byte) error {
	v := reportJSON{reportFields: (*reportFields)(rep)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	rep.Duration = time.Duration(math.Round(v.DurationS * 1e9))
	return nil
}

// WriteJSON writes rep as indented JSON, the form kept for later
// comparison and charting (ReadJSON reads it back).
func WriteJSON(w io.Writer, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadJSON reads a report written by WriteJSON. Unknown fields are
// ignored so that reports from newer versions still load.
func ReadJSON(r io.Reader) (*Report, error) {
	var rep Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("bench: reading report: %w", err)
	}
	return &rep, nil
}

// csvHeader names WriteCSV's columns; the units are in the names since CSV
// has nowhere else to put them.
var csvHeader = []string{"op", "module", "module_path", "concurrency",
	"status", "reason", "mechanism", "runs", "ops_per_s", "ops_per_s_min",
	"ops_per_s_max", "p50_us", "p99_us", "ratio", "floor_ratio"}

// WriteCSV writes one row per result, in rep.Results order, for
// spreadsheets. Numbers are written in full, not rounded as in the table.
func WriteCSV(w io.Writer, rep *Report) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	num := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	for _, r := range rep.Results {
		row := []string{r.id(), r.Module, r.ModulePath,
			strconv.Itoa(r.Concurrency), r.Status, r.Reason, r.Mechanism,
			strconv.Itoa(r.Runs), num(r.OpsPerS), num(r.OpsPerSMin),
			num(r.OpsPerSMax), r.P50.String(), r.P99.String(), num(r.Ratio), num(r.FloorRatio)}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	// The floors are rows of their own, after the modules'.
	for _, f := range []*Result{rep.Floor, rep.RingFloor, rep.TLSFloor} {
		if f == nil {
			continue
		}
		row := []string{f.Op, f.Module, "", strconv.Itoa(f.Concurrency), f.Status, f.Reason, "",
			strconv.Itoa(f.Runs), num(f.OpsPerS), num(f.OpsPerSMin), num(f.OpsPerSMax),
			f.P50.String(), f.P99.String(), "", ""}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// svgColors tells the modules apart; chosen to stay distinct for the
// colour-blind (Okabe-Ito), the baseline getting the first.
var svgColors = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7",
	"#56B4E9", "#D55E00", "#F0E442", "#000000"}

// svgEscape escapes s for SVG text and attribute values. xml.EscapeText also
// replaces characters XML cannot hold, so the document stays valid
// whatever a module is named.
func svgEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder never fails
	return b.String()
}
