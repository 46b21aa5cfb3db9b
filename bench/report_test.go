package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sampleReport has two modules, one with a name that needs escaping, two
// ops at two concurrencies, an unsupported cell and a failed one.
func sampleReport() *Report {
	rep := &Report{
		Started:     time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC),
		Host:        "bench-host",
		CPUs:        8,
		Duration:    2500 * time.Millisecond,
		Runs:        3,
		Modules:     []string{"softhsm", "hsm<&>emu"},
		Concurrency: []int{1, 4},
		Setup: []SetupNote{
			{Module: "hsm<&>emu", What: "populate 1000 objects for find", Took: Micros(1234567 * time.Microsecond)},
		},
	}
	add := func(op, mod string, conc int, status, reason string, rates ...float64) {
		r := Result{Op: op, Module: mod, ModulePath: "/usr/lib/" + mod + ".so",
			Concurrency: conc, Status: status, Reason: reason}
		if op == "sign" {
			r.Mechanism = "CKM_ECDSA"
		}
		for i, x := range rates {
			r.addCell(Cell{OpsPerS: x, Latency: histOf(time.Duration(i+1) * 123456 * time.Nanosecond)})
		}
		summarize(&r)
		rep.Results = append(rep.Results, r)
	}
	// Deliberately not in table order: the emu rows come first.
	add("wrap", "hsm<&>emu", 1, "ok", "", 1520, 1500, 1600)
	add("wrap", "softhsm", 1, "ok", "", 1000, 990, 1010)
	add("wrap", "softhsm", 4, "ok", "", 3800, 3900, 4000)
	add("wrap", "hsm<&>emu", 4, "unsupported", "no C_WrapKey")
	add("sign", "softhsm", 1, "ok", "", 19400, 19300, 19500)
	add("sign", "hsm<&>emu", 1, "failed", "CKR_DEVICE_ERROR")
	setRatios(rep.Results, rep.Modules[0])
	return rep
}

func TestWriteTable(t *testing.T) {
	rep := sampleReport()
	rep.Floor = &Result{Op: "floor", Status: "ok", OpsPerS: 40000, P50: Micros(20 * time.Microsecond), P99: Micros(40 * time.Microsecond)}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"host: bench-host", "cpus: 8", "runs: 3", "2.5s per measurement",
		"softhsm (baseline), hsm<&>emu",
		"1.52x", "1.52k (1.50k-1.60k)",
		"unsupported: no C_WrapKey", "FAILED: CKR_DEVICE_ERROR", "CKM_ECDSA",
		"247us", // p50: the median run's single latency, 2 x 123.456us
		"setup:", "populate 1000 objects for find took 1.23s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	// The set-up summary, and what "x floor" means, come before the
	// results.
	if s, r := strings.Index(out, "setup:"), strings.Index(out, "op  "); s < 0 || r < 0 || s > r {
		t.Errorf("the setup summary is not before the results")
	}
	if rep.Floor != nil && !strings.Contains(out, `"x floor": an op's p50 over its transport's floor times the PKCS#11 calls it makes`) {
		t.Errorf("the table does not say what x floor means")
	}
	lines := strings.Split(out, "\n")
	for _, l := range lines {
		if strings.HasSuffix(l, " ") {
			t.Errorf("line ends in a space: %q", l)
		}
	}
	row := func(prefix ...string) int {
		for i, l := range lines {
			f := strings.Fields(l)
			if len(f) >= len(prefix) && slices.Equal(f[:len(prefix)], prefix) {
				return i
			}
		}
		t.Fatalf("no row %v", prefix)
		return -1
	}
	// Grouped by op (first run first), concurrency, then module order.
	order := []int{
		row("wrap", "1", "softhsm"), row("wrap", "1", "hsm<&>emu"),
		row("wrap", "4", "softhsm"), row("wrap", "4", "hsm<&>emu"),
		row("sign", "1", "softhsm"), row("sign", "1", "hsm<&>emu"),
	}
	if !slices.IsSorted(order) {
		t.Errorf("rows out of order: lines %v", order)
	}
	// The baseline's own row has no ratio.
	if l := lines[row("wrap", "1", "softhsm")]; strings.Contains(l, "x ") || strings.HasSuffix(strings.TrimSpace(l), "x") {
		t.Errorf("baseline row shows a ratio: %q", l)
	}
}

func TestFmtDuration(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{d: 0, want: "0ns"}, {d: 812, want: "812ns"}, {d: 999, want: "999ns"}, {d: 1000, want: "1.00us"},
		{d: 1234, want: "1.23us"}, {d: 9999, want: "10.0us"}, {d: 45678, want: "45.7us"},
		{d: 999499, want: "999us"}, {d: 999500, want: "1.00ms"}, {d: 1234567890, want: "1.23s"},
		{d: time.Hour, want: "3600s"},
	} {
		if got := fmtDuration(c.d); got != c.want {
			t.Errorf("fmtDuration(%d) = %q, want %q", c.d, got, c.want)
		}
	}
	for _, c := range []struct {
		x    float64
		want string
	}{{x: 0.5, want: "0.50"}, {x: 19.4, want: "19.4"}, {x: 19432, want: "19.4k"}, {x: 999.6, want: "1.00k"}, {x: 1.5e6, want: "1.50M"}} {
		if got := fmtRate(c.x); got != c.want {
			t.Errorf("fmtRate(%v) = %q, want %q", c.x, got, c.want)
		}
	}
}

func TestMicrosJSON(t *testing.T) {
	for _, c := range []struct {
		m    Micros
		want string
	}{
		{m: 0, want: "0"}, {m: 1, want: "0.001"}, {m: 1500, want: "1.5"}, {m: 123456, want: "123.456"},
		{m: -1500, want: "-1.5"}, {m: Micros(time.Second), want: "1000000"}, {m: Micros(time.Hour + 7), want: "3600000000.007"},
	} {
		b, err := json.Marshal(c.m)
		if err != nil || string(b) != c.want {
			t.Errorf("Marshal(%d) = %s, %v; want %s", int64(c.m), b, err, c.want)
			continue
		}
		var back Micros
		if err := json.Unmarshal(b, &back); err != nil || back != c.m {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", b, int64(back), err, int64(c.m))
		}
	}
	var m Micros
	if err := json.Unmarshal([]byte("12.3456"), &m); err != nil || m != 12346 {
		t.Errorf("Unmarshal(12.3456) = %d, %v; want 12346 (rounded)", int64(m), err)
	}
	if err := json.Unmarshal([]byte(`"12"`), &m); err == nil {
		t.Error("Unmarshal of a string succeeded")
	}
}

func TestJSONRoundTrip(t *testing.T) {
	rep := sampleReport()
	var b bytes.Buffer
	if err := WriteJSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	raw := b.String()
	for _, want := range []string{`"duration_s": 2.5`, `"took_us": 1234567`, `"p50_us": 246.912`, `"results": [`} {
		if !strings.Contains(raw, want) {
			t.Errorf("JSON lacks %s:\n%s", want, raw)
		}
	}
	// One object per op x module x concurrency.
	var generic struct{ Results []map[string]any }
	if err := json.Unmarshal(b.Bytes(), &generic); err != nil || len(generic.Results) != len(rep.Results) {
		t.Fatalf("results: %d objects, %v; want %d", len(generic.Results), err, len(rep.Results))
	}

	got, err := ReadJSON(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Started.Equal(rep.Started) {
		t.Errorf("Started %v, want %v", got.Started, rep.Started)
	}
	if got.Host != rep.Host || got.CPUs != rep.CPUs || got.Duration != rep.Duration || got.Runs != rep.Runs {
		t.Errorf("header %q %d %v %d, want %q %d %v %d", got.Host, got.CPUs, got.Duration, got.Runs,
			rep.Host, rep.CPUs, rep.Duration, rep.Runs)
	}
	if !slices.Equal(got.Modules, rep.Modules) || !slices.Equal(got.Concurrency, rep.Concurrency) {
		t.Errorf("modules/concurrency %v %v", got.Modules, got.Concurrency)
	}
	if !slices.Equal(got.Setup, rep.Setup) {
		t.Errorf("setup %+v, want %+v", got.Setup, rep.Setup)
	}
	// The cells are the raw material, not part of the report.
	want := slices.Clone(rep.Results)
	for i := range want {
		want[i].cells = nil
	}
	if !reflect.DeepEqual(got.Results, want) {
		t.Errorf("results differ:\n got %+v\nwant %+v", got.Results, want)
	}

	// json.Marshal of a Report, not only WriteJSON, carries the duration.
	j, _ := json.Marshal(Report{Duration: time.Second})
	if !strings.Contains(string(j), `"duration_s":1`) {
		t.Errorf("json.Marshal(Report) = %s", j)
	}
	if _, err := ReadJSON(strings.NewReader("{")); err == nil {
		t.Error("ReadJSON accepted truncated JSON")
	}
}

func TestWriteCSV(t *testing.T) {
	rep := sampleReport()
	var b bytes.Buffer
	if err := WriteCSV(&b, rep); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	header := "op,module,module_path,concurrency,status,reason,mechanism,runs,ops_per_s,ops_per_s_min,ops_per_s_max,p50_us,p99_us,ratio,floor_ratio"
	if len(rows) != 1+len(rep.Results) {
		t.Fatalf("%d rows, want %d", len(rows), 1+len(rep.Results))
	}
	if got := strings.Join(rows[0], ","); got != header {
		t.Errorf("header %s, want %s", got, header)
	}
	first := rows[1] // rep.Results[0]: wrap, hsm<&>emu, c=1
	want := []string{"wrap", "hsm<&>emu", "/usr/lib/hsm<&>emu.so", "1", "ok", "", "", "3",
		"1520", "1500", "1600", "246.912", "246.912", "1.52", "0"}
	if !slices.Equal(first, want) {
		t.Errorf("row 1 = %q, want %q", first, want)
	}
	if r := rows[4]; r[4] != "unsupported" || r[5] != "no C_WrapKey" {
		t.Errorf("unsupported row = %q", r)
	}
}

// svgParts decodes a chart: its bars (by module and op, their width and
// the ops/s they stand for), its panels and its texts.
type svgBar struct {
	op, title string
	width     float64
}

func svgParts(t *testing.T, doc string) (bars []svgBar, panels, swatches int, texts []string) {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(doc))
	op := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("invalid XML: %v\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			switch {
			case tok.Name.Local == "g" && xmlAttr(tok, "class") == "panel":
				panels++
				op = xmlAttr(tok, "data-op")
			case tok.Name.Local == "rect" && xmlAttr(tok, "class") == "bar":
				w, err := strconv.ParseFloat(xmlAttr(tok, "width"), 64)
				if err != nil {
					t.Fatalf("bar width: %v", err)
				}
				bars = append(bars, svgBar{op: op, width: w})
			case tok.Name.Local == "rect" && xmlAttr(tok, "class") == "swatch":
				swatches++
			case tok.Name.Local == "rect":
				t.Errorf("a rect of no known class")
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" {
				texts = append(texts, s)
				if n := len(bars); n > 0 && bars[n-1].title == "" && strings.Contains(s, " ops/s") {
					bars[n-1].title = s
				}
			}
		}
	}
	return bars, panels, swatches, texts
}

func TestWriteSVG(t *testing.T) {
	rep := sampleReport()
	var b bytes.Buffer
	if err := WriteSVG(&b, rep); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	if p := os.Getenv("BENCH_SVG_OUT"); p != "" {
		_ = os.WriteFile(p, b.Bytes(), 0o644)
	}
	bars, panels, swatches, texts := svgParts(t, doc)
	ok := 0
	for _, r := range rep.Results {
		if r.Status == "ok" {
			ok++
		}
	}
	// One panel per operation, one bar per result measured.
	if len(bars) != ok || panels != 2 || swatches != len(rep.Modules) {
		t.Errorf("%d bars, %d panels, %d legend swatches; want %d, 2, %d", len(bars), panels, swatches, ok, len(rep.Modules))
	}
	// Linear: within a panel, widths are in the ratio of the rates (the
	// wrap panel's 1.52k, 1k and 3.9k ops/s).
	var wrap []float64
	for _, br := range bars {
		if br.op == "wrap" {
			wrap = append(wrap, br.width)
		}
	}
	if len(wrap) != 3 {
		t.Fatalf("wrap bars: %v", wrap)
	}
	var rates []float64
	for _, r := range orderedResults(rep) {
		if r.Op == "wrap" && r.Status == "ok" {
			rates = append(rates, r.OpsPerS)
		}
	}
	for j := 1; j < len(rates); j++ {
		if got, want := wrap[j]/wrap[0], rates[j]/rates[0]; got < want*0.995 || got > want*1.005 {
			t.Errorf("bar %d is %.3f times bar 0, its rate %.3f times: the axis is not linear", j, got, want)
		}
	}
	// The axis starts at 0 and ends at the first tick above the fastest.
	for _, want := range []string{
		"unsupported", "failed", "hsm<&>emu", "softhsm (baseline)",
		"c=1  softhsm", "c=4  softhsm", "c=1  hsm<&>emu",
		"wrap", "sign (CKM_ECDSA)", "0", "1k", "4k", "20k",
		"19.4k/s", "1.52k/s  1.52x",
	} {
		if !slices.Contains(texts, want) {
			t.Errorf("SVG has no text %q", want)
		}
	}
	if !strings.Contains(texts[0]+texts[1], "bench-host") {
		t.Errorf("title lacks the host: %q", texts[:2])
	}
	// Escaped in the source, not merely decodable.
	if strings.Contains(doc, "hsm<&>emu") || !strings.Contains(doc, "hsm&lt;&amp;&gt;emu") {
		t.Error("module name not escaped")
	}
}

func TestLinearAxis(t *testing.T) {
	for _, c := range []struct{ fastest, max, step float64 }{
		{15000, 15000, 5000}, {27000, 30000, 10000}, {3900, 4000, 1000}, {19400, 20000, 5000},
		{0.2, 0.2, 0.05}, {5e7, 6e7, 2e7}, {0, 1, 1},
	} {
		max, step := linearAxis(c.fastest)
		if math.Abs(max-c.max) > 1e-9*c.max || math.Abs(step-c.step) > 1e-9*c.step || max < c.fastest {
			t.Errorf("linearAxis(%g) = %g, %g; want %g, %g", c.fastest, max, step, c.max, c.step)
		}
	}
}

func TestWriteSVGEmptyAndFast(t *testing.T) {
	for _, rep := range []*Report{
		{},
		{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 5e7}}},
		{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 0.2}}},
		{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "failed"}}},
	} {
		var b bytes.Buffer
		if err := WriteSVG(&b, rep); err != nil {
			t.Fatal(err)
		}
		svgParts(t, b.String())
	}
	var b bytes.Buffer
	rep := &Report{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 5e7}}}
	if err := WriteSVG(&b, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), ">60M</text>") {
		t.Error("axis not widened to 60M for 50M ops/s")
	}
}

// TestWriteHTML: one page holding the machine, the versions, the set-up,
// the table and the chart, and nothing it would fetch.
func TestWriteHTML(t *testing.T) {
	rep := sampleReport()
	rep.Floor = &Result{Op: "floor", Status: "ok", OpsPerS: 40000, P50: Micros(20 * time.Microsecond), P99: Micros(40 * time.Microsecond)}
	var b bytes.Buffer
	if err := WriteHTML(&b, rep, About{Version: "v1.2.3", Commit: "abc123", GoVersion: "go1.26", Platform: "linux/amd64"}); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	for _, want := range []string{
		"<!DOCTYPE html>", "bench-host, 8 CPUs", "v1.2.3 (commit abc123)", "go1.26", "linux/amd64",
		"softhsm = /usr/lib/softhsm.so (baseline)", "hsm&lt;&amp;&gt;emu: populate 1000 objects for find took",
		"&#34;x floor&#34; is an operation", "<td>CKR_DEVICE_ERROR</td>", `<g class="panel" data-op="wrap">`, "</svg>",
	} {
		if !strings.Contains(doc, want) && !strings.Contains(doc, strings.ReplaceAll(want, "<td>CKR", "<td>FAILED: CKR")) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Set-up before results, results before the chart.
	if s, r, c := strings.Index(doc, "<h2>Set-up"), strings.Index(doc, "<h2>Results"), strings.Index(doc, "<svg"); !(s > 0 && s < r && r < c) {
		t.Errorf("order: set-up at %d, results at %d, chart at %d", s, r, c)
	}
	if rows := strings.Count(doc, "<tr><td>"); rows != len(rep.Results) {
		t.Errorf("%d table rows, want %d", rows, len(rep.Results))
	}
	// Self-contained: the SVG namespace is the only address.
	for _, m := range regexp.MustCompile(`(src|href)=|https?://[^"]*|<link|<script`).FindAllString(doc, -1) {
		if m != "http://www.w3.org/2000/svg" {
			t.Errorf("the page refers outside itself: %q", m)
		}
	}
}

func xmlAttr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}
