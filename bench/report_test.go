package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
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
	if rep.Floor != nil && !strings.Contains(out, `"x floor": an op's p50 over the floor's times the PKCS#11 calls it makes`) {
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

	// The whole document must decode as XML; count the rectangles.
	dec := xml.NewDecoder(strings.NewReader(doc))
	bars, swatches, other := 0, 0, 0
	var texts []string
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
			if tok.Name.Local == "rect" {
				switch xmlAttr(tok, "class") {
				case "bar":
					bars++
				case "swatch":
					swatches++
				default:
					other++
				}
			}
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	ok := 0
	for _, r := range rep.Results {
		if r.Status == "ok" {
			ok++
		}
	}
	if bars != ok || swatches != len(rep.Modules) || other != 0 {
		t.Errorf("%d bars, %d legend swatches, %d other rects; want %d, %d, 0", bars, swatches, other, ok, len(rep.Modules))
	}
	for _, want := range []string{
		"unsupported", "failed", "hsm<&>emu", "softhsm (baseline)",
		"wrap  c=1", "wrap  c=4", "sign  c=1",
		"1", "10", "100", "1k", "10k", "100k", "1M",
		"19.4k", "1.52k",
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
	if n := len(regexp.MustCompile(`<rect`).FindAllString(doc, -1)); n != ok+len(rep.Modules) {
		t.Errorf("%d <rect in the source", n)
	}
}

func TestWriteSVGEmptyAndFast(t *testing.T) {
	for _, rep := range []*Report{
		{},
		{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 5e7}}},
		{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 0.2}}},
	} {
		var b bytes.Buffer
		if err := WriteSVG(&b, rep); err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(&b)
		for {
			_, err := dec.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("invalid XML: %v", err)
			}
		}
	}
	var b bytes.Buffer
	rep := &Report{Modules: []string{"a"}, Results: []Result{{Op: "x", Module: "a", Concurrency: 1, Status: "ok", OpsPerS: 5e7}}}
	if err := WriteSVG(&b, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), ">100M</text>") {
		t.Error("axis not widened to 100M for 50M ops/s")
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
