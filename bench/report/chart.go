package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The chart's layout, in points.
const (
	chartPerRow  = 4 // panels in a row
	chartWidth   = 930
	chartPanelH  = 190
	chartMargin  = 15
	chartTitleH  = 30
	chartLegendH = 40
	chartFootH   = 20
	chartBarFill = 0.76 // of the space one server has in a panel
)

var (
	whiskerColor = rgb(0x333333)
	quietColor   = rgb(0x999999)
	footColor    = rgb(0x555555)
)

// rgb makes an opaque colour of 0xRRGGBB.
func rgb(v uint32) color.RGBA {
	return color.RGBA{R: uint8(v >> 16), G: uint8(v >> 8), B: uint8(v), A: 0xff}
}

// chart draws one small bar chart per workload, servers side by side, each
// panel on its own scale (IOPS, or MB/s for 1 MiB workloads): the rows
// differ by three orders of magnitude, so one scale would flatten most of
// them. It returns the chart as SVG.
func chart(cells []Cell, meta map[string]string) ([]byte, error) {
	// Sans serif, as the hand-written chart had, for the library's
	// default font in every piece of text the library makes.
	plot.DefaultFont = font.Font{Typeface: "Liberation", Variant: "Sans"}
	cols := activeServers(cells)
	rows := activeWorkloads(cells)
	nrows := (len(rows) + chartPerRow - 1) / chartPerRow
	w := vg.Length(chartWidth)
	h := vg.Length(chartTitleH+chartLegendH+chartFootH+2*chartMargin) + vg.Length(nrows*chartPanelH)
	c := vgsvg.New(w, h)
	dc := draw.New(c)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	top := h - chartMargin
	dc.FillText(textStyle(13, color.Black, draw.XLeft, draw.YTop), vg.Point{X: chartMargin, Y: top},
		fmt.Sprintf("stackd and its peers under fio --ioengine=nbd (median of %s runs; higher is better)", meta["reps"]))
	dc.FillText(textStyle(8, footColor, draw.XLeft, draw.YBottom), vg.Point{X: chartMargin, Y: chartMargin / 2},
		"bars: median; whiskers: fastest and slowest run; each panel on its own scale")

	// The legend: one column of entries for every chartPerRow servers.
	legendTop := top - chartTitleH
	colW := (w - 2*chartMargin) / chartPerRow
	for i := 0; i < chartPerRow && i < len(cols); i++ {
		l := plot.NewLegend()
		l.Top, l.Left = true, true
		l.TextStyle.Font.Size = 10
		l.ThumbnailWidth = 12
		l.Padding = 5
		for j := i; j < len(cols); j += chartPerRow {
			l.Add(cols[j].Label, &plotter.BarChart{Color: cols[j].Color, LineStyle: draw.LineStyle{Color: cols[j].Color}})
		}
		x := chartMargin + vg.Length(i)*colW
		l.Draw(draw.Crop(dc, x-dc.Min.X, x+colW-dc.Max.X, legendTop-chartLegendH-dc.Min.Y, legendTop-dc.Max.Y))
	}

	plots := make([][]*plot.Plot, nrows)
	bars := make([][][]*plotter.BarChart, nrows)
	for r := range plots {
		plots[r] = make([]*plot.Plot, chartPerRow)
		bars[r] = make([][]*plotter.BarChart, chartPerRow)
	}
	for i, wl := range rows {
		p, b, err := panel(wl, cols, cells)
		if err != nil {
			return nil, err
		}
		plots[i/chartPerRow][i%chartPerRow], bars[i/chartPerRow][i%chartPerRow] = p, b
	}
	area := draw.Crop(dc, chartMargin, -chartMargin, chartMargin+chartFootH, -(chartMargin + chartTitleH + chartLegendH))
	tiles := draw.Tiles{Rows: nrows, Cols: chartPerRow, PadX: 14, PadY: 10}
	canvases := plot.Align(plots, tiles, area)
	for r := range plots {
		for i, p := range plots[r] {
			if p == nil {
				continue
			}
			// A bar's width is in points, so it is known only once the
			// panel's data area is.
			da := p.DataCanvas(canvases[r][i])
			bw := (da.Max.X - da.Min.X) / vg.Length(len(cols)) * chartBarFill
			for _, b := range bars[r][i] {
				b.Width = bw
			}
			p.Draw(canvases[r][i])
		}
	}
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// panel makes one workload's plot: a bar per server at x = its column,
// with a whisker from the slowest to the fastest run and the median
// written above; n/a where the server did not run the workload. It
// returns the bars too, whose width the caller sets.
func panel(wl workload, cols []server, cells []Cell) (*plot.Plot, []*plotter.BarChart, error) {
	p := plot.New()
	unit := "IOPS"
	if wl.MBps {
		unit = "MB/s"
	}
	p.Title.Text = fmt.Sprintf("%s (%s)", wl.Label, unit)
	p.Title.TextStyle.Font.Size = 10
	p.X.Min, p.X.Max = -0.5, float64(len(cols))-0.5
	p.X.Tick.Marker = plot.ConstantTicks(nil)
	p.X.Padding, p.Y.Padding = 0, 0
	p.Y.Tick.Marker = roundTicks{}
	p.Y.Tick.Label.Font.Size = 8
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	p.Add(grid)

	var bars []*plotter.BarChart
	var notes plotter.XYLabels
	var noteStyles []text.Style
	var peak float64
	for j, s := range cols {
		x := float64(j)
		c := find(cells, wl.Name, s.Name)
		if c == nil {
			notes.XYs = append(notes.XYs, plotter.XY{X: x, Y: 0})
			notes.Labels = append(notes.Labels, "n/a")
			noteStyles = append(noteStyles, textStyle(7, quietColor, draw.XCenter, draw.YBottom))
			continue
		}
		b := &plotter.BarChart{Values: plotter.Values{c.Median}, XMin: x, Color: s.Color, Width: 1,
			LineStyle: draw.LineStyle{Color: s.Color}}
		whisker := &plotter.YErrorBars{
			XYs:       plotter.XYs{{X: x, Y: c.Median}},
			YErrors:   plotter.YErrors{{Low: c.Median - c.Min, High: c.Max - c.Median}},
			LineStyle: draw.LineStyle{Color: whiskerColor, Width: 0.6},
			CapWidth:  3,
		}
		p.Add(b, whisker)
		bars = append(bars, b)
		label := shortValue(c.Median)
		if wl.MBps {
			label = fmt.Sprintf("%.0f", c.Median)
		}
		notes.XYs = append(notes.XYs, plotter.XY{X: x, Y: c.Max})
		notes.Labels = append(notes.Labels, label)
		noteStyles = append(noteStyles, textStyle(6.5, color.Black, draw.XCenter, draw.YBottom))
		peak = max(peak, c.Max)
	}
	labels, err := plotter.NewLabels(notes)
	if err != nil {
		return nil, nil, err
	}
	labels.TextStyle = noteStyles
	labels.Offset = vg.Point{Y: 2}
	p.Add(labels)
	// Room above the tallest whisker for its label.
	p.Y.Min, p.Y.Max = 0, peak*1.12
	return p, bars, nil
}

func textStyle(size vg.Length, c color.Color, x text.XAlignment, y text.YAlignment) text.Style {
	return text.Style{Color: c, Font: font.From(plot.DefaultFont, size), XAlign: x, YAlign: y, Handler: plot.DefaultTextHandler}
}

// roundTicks mark the value axis from 0 at four or five round steps,
// labelled 20k, 1.5M: the library's default ticks leave some panels with
// only two labels.
type roundTicks struct{}

func (roundTicks) Ticks(min, max float64) []plot.Tick {
	step := niceStep(max / 4)
	var ts []plot.Tick
	for v := 0.0; v <= max; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: axisLabel(v)})
	}
	return ts
}

// niceStep is the smallest of 1, 2, 2.5 and 5 times a power of ten that
// is at least x.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

func axisLabel(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func shortValue(v float64) string {
	if v >= 1e3 {
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
