package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Chart geometry, in SVG user units (px).
const (
	svgWidth     = 960
	svgLabelW    = 190 // row labels left of the bars
	svgPlotW     = 600
	svgBarH      = 14
	svgBarGap    = 3
	svgPanelHead = 26 // a panel's title
	svgPanelAxis = 30 // a panel's axis and its labels
	svgPanelGap  = 16
	svgTitleH    = 46
	svgLegendRow = 20
)

// niceStep rounds x up to 1, 2 or 5 times a power of ten: the step of an
// axis people read.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= x*(1-1e-9) {
			return m * e
		}
	}
	return 10 * e
}

// linearAxis is a panel's axis: from 0 to max in ticks of step, max the
// first tick at or above the panel's fastest bar.
func linearAxis(fastest float64) (max, step float64) {
	step = niceStep(fastest / 4)
	max = math.Ceil(fastest/step-1e-9) * step
	if max <= 0 {
		max = step
	}
	return max, step
}

// tickLabel is an axis label: 0, 500, 1k, 2.5k, 20M (fmtRate less its
// trailing zeros).
func tickLabel(x float64) string {
	s := fmtRate(x)
	num := strings.TrimRight(s, "kMGT")
	if strings.Contains(num, ".") {
		num = strings.TrimRight(strings.TrimRight(num, "0"), ".")
	}
	return num + s[len(strings.TrimRight(s, "kMGT")):]
}

// chartPanels groups results by op, in table order: one panel each.
func chartPanels(rs []Result) [][]Result {
	var ps [][]Result
	for _, r := range rs {
		if n := len(ps); n > 0 && ps[n-1][0].id() == r.id() {
			ps[n-1] = append(ps[n-1], r)
			continue
		}
		ps = append(ps, []Result{r})
	}
	return ps
}

// WriteSVG writes rep as a self-contained SVG chart of ops/s: one panel per
// operation, each with its own linear axis from zero (a log axis makes 15k
// and 27k look alike), a bar per module and concurrency, labelled with its
// rate and, beside the baseline's, its ratio to it.
func WriteSVG(w io.Writer, rep *Report) error {
	_, err := io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+svgChart(rep))
	return err
}

func svgChart(rep *Report) string {
	rs := orderedResults(rep)
	base := baselineOf(rep)

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
	panels := chartPanels(rs)

	legendTop := svgTitleH
	top := legendTop + svgLegendRow*((len(mods)+3)/4) + 6
	height := top
	for _, p := range panels {
		height += svgPanelHead + len(p)*(svgBarH+svgBarGap) + svgPanelAxis + svgPanelGap
	}
	x0 := float64(svgLabelW)

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, `<title>ops/s per operation for each module</title>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n",
		svgEscape(fmt.Sprintf("ops/s per operation: %s, %d CPUs, %d runs of %s", rep.Host, rep.CPUs, rep.Runs, rep.Duration)))
	fmt.Fprintf(&b, `<text x="10" y="36" fill="#555">%s</text>`+"\n",
		svgEscape("each operation on its own linear axis from 0; a ratio is a module's ops/s over the baseline's, same operation and concurrency"))

	for i, m := range mods {
		lx := 10 + (i%4)*230
		ly := legendTop + (i/4)*svgLegendRow
		name := m
		if m == base {
			name += " (baseline)"
		}
		fmt.Fprintf(&b, `<rect class="swatch" x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n", lx, ly, color[m])
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", lx+16, ly+10, svgEscape(name))
	}

	y := top
	for _, p := range panels {
		fastest := 0.0
		for _, r := range p {
			if r.Status == "ok" {
				fastest = math.Max(fastest, r.OpsPerS)
			}
		}
		max, step := linearAxis(fastest)
		xOf := func(v float64) float64 { return v / max * svgPlotW }
		fmt.Fprintf(&b, `<g class="panel" data-op="%s">`+"\n", svgEscape(p[0].id()))
		title := p[0].id()
		if p[0].Mechanism != "" {
			title += " (" + p[0].Mechanism + ")"
		}
		fmt.Fprintf(&b, `<text x="10" y="%d" font-size="12" font-weight="bold">%s</text>`+"\n", y+16, svgEscape(title))
		rowsTop := y + svgPanelHead
		axisY := rowsTop + len(p)*(svgBarH+svgBarGap)
		for t := 0.0; t <= max+step/2; t += step {
			x := x0 + xOf(t)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x, rowsTop, x, axisY)
			fmt.Fprintf(&b, `<text class="tick" x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", x, axisY+14, tickLabel(t))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">ops/s</text>`+"\n", x0+svgPlotW/2, axisY+26)
		for i, r := range p {
			by := rowsTop + i*(svgBarH+svgBarGap)
			ty := by + svgBarH - 3
			// xml:space keeps the two spaces of "c=1  softhsm".
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="end" xml:space="preserve">%s</text>`+"\n",
				x0-8, ty, svgEscape(fmt.Sprintf("c=%d  %s", r.Concurrency, r.Module)))
			if r.Status != "ok" {
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#999" font-size="10">%s</text>`+"\n", x0+4, ty, svgEscape(r.Status))
				continue
			}
			bw := math.Max(xOf(r.OpsPerS), 1) // a sliver for the slowest
			fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%d" width="%.2f" height="%d" fill="%s" data-ops="%g"><title>%s</title></rect>`+"\n",
				x0, by, bw, svgBarH, color[r.Module], r.OpsPerS,
				svgEscape(fmt.Sprintf("%s, %s c=%d: %s ops/s", r.Module, r.id(), r.Concurrency, fmtRate(r.OpsPerS))))
			label := fmtRate(r.OpsPerS) + "/s"
			if r.Module != base && r.Ratio != 0 {
				label += fmt.Sprintf("  %.2fx", r.Ratio)
			}
			fmt.Fprintf(&b, `<text class="value" x="%.1f" y="%d" xml:space="preserve">%s</text>`+"\n", x0+bw+4, ty, svgEscape(label))
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/>`+"\n", x0, axisY, x0+svgPlotW, axisY)
		b.WriteString("</g>\n")
		y = axisY + svgPanelAxis + svgPanelGap
	}
	b.WriteString("</svg>\n")
	return b.String()
}
