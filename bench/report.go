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
		if _, ok := opIdx[r.Op]; !ok {
			opIdx[r.Op] = len(opIdx)
		}
		if _, ok := modIdx[r.Module]; !ok {
			modIdx[r.Module] = len(modIdx) + len(rep.Modules)
		}
	}
	rs := append([]Result(nil), rep.Results...)
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.Op != b.Op {
			return opIdx[a.Op] < opIdx[b.Op]
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
			parts = append(parts, fmt.Sprintf("p50 %.2fx floor", r.FloorRatio))
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
	if f := rep.Floor; f != nil && f.Status == "ok" {
		fmt.Fprintf(&b, "floor: a bare Unix-socket round trip to another process, p50 %s, p99 %s (%s/s)\n",
			fmtDuration(time.Duration(f.P50)), fmtDuration(time.Duration(f.P99)), fmtRate(f.OpsPerS))
		fmt.Fprintln(&b, `"x floor": an op's p50 over the floor's times the PKCS#11 calls it makes (1.00x: each call costs a bare round trip)`)
	}
	// What was set up before measuring, before what was measured.
	if len(rep.Setup) > 0 {
		fmt.Fprintln(&b, "setup:")
		for _, s := range rep.Setup {
			fmt.Fprintf(&b, "  %s: %s took %s\n", tableCell(s.Module),
				tableCell(s.What), fmtDuration(time.Duration(s.Took)))
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
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", tableCell(r.Op),
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
		row := []string{r.Op, r.Module, r.ModulePath,
			strconv.Itoa(r.Concurrency), r.Status, r.Reason, r.Mechanism,
			strconv.Itoa(r.Runs), num(r.OpsPerS), num(r.OpsPerSMin),
			num(r.OpsPerSMax), r.P50.String(), r.P99.String(), num(r.Ratio), num(r.FloorRatio)}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	// The floor is a row of its own, after the modules'.
	if f := rep.Floor; f != nil {
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

// Chart geometry, in SVG user units (px).
const (
	svgWidth     = 960
	svgLabelW    = 170 // group labels left of the plot
	svgPlotW     = 640
	svgBarH      = 14
	svgBarGap    = 3
	svgGroupGap  = 14
	svgTitleH    = 30
	svgLegendRow = 20
	svgAxisH     = 28
)

// decadeLabel names 10^k ops/s on the axis: 1, 10, 100, 1k, ... 1M.
func decadeLabel(k int) string {
	units := []string{"", "k", "M", "G", "T"}
	u := k / 3
	if u >= len(units) {
		u = len(units) - 1
	}
	return strconv.FormatFloat(math.Pow(10, float64(k-3*u)), 'f', 0, 64) + units[u]
}

// WriteSVG writes rep as a self-contained SVG bar chart of ops/s: one
// group of bars per op and concurrency, one bar per module. The x axis is
// logarithmic because the modules compared can differ by orders of
// magnitude (a software token against a network HSM).
func WriteSVG(w io.Writer, rep *Report) error {
	rs := orderedResults(rep)

	// Every module gets a colour and a legend entry, including modules
	// that only appear in results.
	var mods []string
	color := map[string]string{}
	addMod := func(m string) {
		if _, ok := color[m]; !ok {
			color[m] = svgColors[len(mods)%len(svgColors)]
			mods = append(mods, m)
		}
	}
	for _, m := range rep.Modules {
		addMod(m)
	}
	for _, r := range rs {
		addMod(r.Module)
	}

	// The axis spans 1 to 1M ops/s, widened if a module is faster.
	decades := 6
	for _, r := range rs {
		if r.Status == "ok" && r.OpsPerS > 0 {
			if k := int(math.Ceil(math.Log10(r.OpsPerS))); k > decades {
				decades = k
			}
		}
	}
	xOf := func(v float64) float64 {
		if v <= 1 {
			return 0
		}
		return math.Log10(v) / float64(decades) * svgPlotW
	}

	// Groups of consecutive results with the same op and concurrency.
	type group struct {
		label string
		rows  []Result
	}
	var groups []group
	for _, r := range rs {
		label := fmt.Sprintf("%s  c=%d", r.Op, r.Concurrency)
		if n := len(groups); n > 0 && groups[n-1].rows[0].Op == r.Op &&
			groups[n-1].rows[0].Concurrency == r.Concurrency {
			groups[n-1].rows = append(groups[n-1].rows, r)
			continue
		}
		groups = append(groups, group{label, []Result{r}})
	}

	legendTop := svgTitleH
	plotTop := legendTop + svgLegendRow*((len(mods)+3)/4) + 10
	plotH := 0
	for _, g := range groups {
		plotH += len(g.rows)*(svgBarH+svgBarGap) + svgGroupGap
	}
	height := plotTop + plotH + svgAxisH
	x0 := float64(svgLabelW)

	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, `<title>ops/s per op for each module</title>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n",
		svgEscape(fmt.Sprintf("ops/s per op for each module: %s, %d CPUs, %d runs of %s",
			rep.Host, rep.CPUs, rep.Runs, rep.Duration)))

	// Legend: four entries a row.
	for i, m := range mods {
		lx := 10 + (i%4)*230
		ly := legendTop + (i/4)*svgLegendRow
		name := m
		if i == 0 && m == baselineOf(rep) {
			name += " (baseline)"
		}
		fmt.Fprintf(&b, `<rect class="swatch" x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n",
			lx, ly, color[m])
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", lx+16, ly+10, svgEscape(name))
	}

	// Decade gridlines and labels.
	axisY := plotTop + plotH
	for k := 0; k <= decades; k++ {
		x := x0 + float64(k)/float64(decades)*svgPlotW
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n",
			x, plotTop, x, axisY)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n",
			x, axisY+14, decadeLabel(k))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">ops/s (log scale)</text>`+"\n",
		x0+svgPlotW/2, axisY+26)

	y := plotTop
	for _, g := range groups {
		gh := len(g.rows) * (svgBarH + svgBarGap)
		// xml:space keeps the two spaces of "wrap  c=1".
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="end" xml:space="preserve">%s</text>`+"\n",
			x0-8, y+gh/2+4, svgEscape(g.label))
		for i, r := range g.rows {
			by := y + i*(svgBarH+svgBarGap)
			ty := by + svgBarH - 3
			if r.Status != "ok" {
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#999" font-size="10">%s</text>`+"\n",
					x0+4, ty, svgEscape(r.Status))
				continue
			}
			bw := math.Max(xOf(r.OpsPerS), 1) // a sliver even below 1 op/s
			fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
				x0, by, bw, svgBarH, color[r.Module],
				svgEscape(fmt.Sprintf("%s: %s ops/s", r.Module, fmtRate(r.OpsPerS))))
			fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n",
				x0+bw+4, ty, svgEscape(fmtRate(r.OpsPerS)))
		}
		y += gh + svgGroupGap
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/>`+"\n",
		x0, axisY, x0+svgPlotW, axisY)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
