package bench

import (
	"fmt"
	"html"
	"io"
	"strings"
	"time"
)

// About is what a report says of the software that made it.
type About struct {
	Version   string // hsmemu's
	Commit    string
	GoVersion string
	Platform  string // GOOS/GOARCH
}

// WriteHTML writes rep as one self-contained HTML page to share: the
// machine and versions, what was set up, the table and the charts, with
// no file or address outside it (the style and the SVG are inline).
func WriteHTML(w io.Writer, rep *Report, about About) error {
	e := html.EscapeString
	base := baselineOf(rep)
	var b strings.Builder
	title := fmt.Sprintf("hsmemu bench on %s, %s", rep.Host, rep.Started.UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
	fmt.Fprintf(&b, "<title>%s</title>\n", e(title))
	b.WriteString(`<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dt { font-weight: bold; float: left; clear: left; width: 9em; }
dd { margin-left: 10em; }
.note { color: #555; }
</style>
</head>
<body>
`)
	fmt.Fprintf(&b, "<h1>%s</h1>\n", e(title))

	b.WriteString("<h2>Machine and versions</h2>\n<dl>\n")
	item := func(k, v string) { fmt.Fprintf(&b, "<dt>%s</dt><dd>%s</dd>\n", e(k), e(v)) }
	item("host", fmt.Sprintf("%s, %d CPUs", rep.Host, rep.CPUs))
	if about.Platform != "" {
		item("platform", about.Platform)
	}
	if about.Version != "" {
		v := about.Version
		if about.Commit != "" {
			v += " (commit " + about.Commit + ")"
		}
		item("hsmemu", v)
	}
	if about.GoVersion != "" {
		item("Go", about.GoVersion)
	}
	item("started", rep.Started.UTC().Format(time.RFC3339))
	item("measured", fmt.Sprintf("%d runs of %s per operation, module and concurrency; the median is reported", rep.Runs, rep.Duration))
	paths := map[string]string{}
	for _, r := range rep.Results {
		paths[r.Module] = r.ModulePath
	}
	for i, m := range rep.Modules {
		v := m
		if p := paths[m]; p != "" && p != m {
			v += " = " + p
		}
		if i == 0 {
			v += " (baseline)"
		}
		item("module", v)
	}
	b.WriteString("</dl>\n")

	// What was set up comes before what was measured.
	if len(rep.Setup) > 0 {
		b.WriteString("<h2>Set-up</h2>\n<ul>\n")
		for _, s := range rep.Setup {
			fmt.Fprintf(&b, "<li>%s: %s took %s</li>\n", e(s.Module), e(s.What), e(fmtDuration(time.Duration(s.Took))))
		}
		b.WriteString("</ul>\n")
	}

	b.WriteString("<h2>Results</h2>\n")
	if f := rep.Floor; f != nil && f.Status == "ok" {
		ring := ""
		if r := rep.RingFloor; r != nil && r.Status == "ok" {
			ring = fmt.Sprintf("; through shared-memory rings (the module's default), p50 %s, p99 %s",
				e(fmtDuration(time.Duration(r.P50))), e(fmtDuration(time.Duration(r.P99))))
		}
		fmt.Fprintf(&b, "<p class=\"note\">floor: a bare Unix-socket round trip to another process, p50 %s, p99 %s%s. %s</p>\n",
			e(fmtDuration(time.Duration(f.P50))), e(fmtDuration(time.Duration(f.P99))), ring,
			e(`"x floor" is an operation's p50 over its transport's floor times the PKCS#11 calls it makes (1.00x: each call costs a bare round trip).`))
	}
	b.WriteString("<table>\n<tr><th>op</th><th>conc</th><th>module</th><th>ops/s (min-max)</th><th>p50</th><th>p99</th><th>ratio</th><th>note</th></tr>\n")
	for _, r := range orderedResults(rep) {
		var rate, p50, p99, ratio string
		if r.Status == "ok" {
			rate = fmt.Sprintf("%s (%s-%s)", fmtRate(r.OpsPerS), fmtRate(r.OpsPerSMin), fmtRate(r.OpsPerSMax))
			p50, p99 = fmtDuration(time.Duration(r.P50)), fmtDuration(time.Duration(r.P99))
			if r.Ratio != 0 && r.Module != base {
				ratio = fmt.Sprintf("%.2fx", r.Ratio)
			}
		}
		fmt.Fprintf(&b, "<tr><td>%s</td><td class=\"num\">%d</td><td>%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td>%s</td></tr>\n",
			e(r.id()), r.Concurrency, e(r.Module), e(rate), e(p50), e(p99), e(ratio), e(tableNote(r)))
	}
	b.WriteString("</table>\n<h2>Charts</h2>\n")
	b.WriteString(svgChart(rep))
	b.WriteString("</body>\n</html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
