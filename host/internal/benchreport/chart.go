package benchreport

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Chart draws itself into an SVG file.
type Chart interface {
	Save(path string) error
}

// Series is one named set of values.
type Series struct {
	Name   string
	Values []float64 // one per category (bars) or per X (lines); NaN = not measured
}

// BarChart is a grouped bar chart: a group of bars per category, one bar
// per series.
type BarChart struct {
	Title, YLabel string
	Categories    []string
	Series        []Series
}

// Save writes the chart as SVG.
func (c *BarChart) Save(path string) error {
	if len(c.Categories) == 0 || len(c.Series) == 0 {
		return fmt.Errorf("bar chart %q: nothing to draw", c.Title)
	}
	p := plot.New()
	p.Title.Text = c.Title
	p.Y.Label.Text = c.YLabel
	width := vg.Points(math.Max(6, 100/float64(len(c.Series))))
	for i, s := range c.Series {
		if len(s.Values) != len(c.Categories) {
			return fmt.Errorf("bar chart %q: series %q has %d values for %d categories", c.Title, s.Name, len(s.Values), len(c.Categories))
		}
		vals := make(plotter.Values, len(s.Values))
		for j, v := range s.Values {
			if math.IsNaN(v) {
				v = 0 // not measured: the table says why
			}
			vals[j] = v
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return fmt.Errorf("bar chart %q: %w", c.Title, err)
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(float64(i)-float64(len(c.Series)-1)/2) * width
		p.Add(bars)
		p.Legend.Add(s.Name, bars)
	}
	p.NominalX(c.Categories...)
	p.X.Tick.Label.Font.Size = vg.Points(9)
	// Half a category of room on each side keeps the outer labels whole.
	p.X.Min, p.X.Max = -0.5, float64(len(c.Categories))-0.5
	legendAbove(p, len(c.Series), false)
	w := vg.Length(math.Max(6, 1.9*float64(len(c.Categories)))) * vg.Inch
	return save(p, w, path)
}

// LineChart plots series against a shared numeric X axis.
type LineChart struct {
	Title, XLabel, YLabel string
	X                     []float64
	XTicks                []string // labels for X, optional (same length)
	Series                []Series
	LogX, LogY            bool
}

// Save writes the chart as SVG.
func (c *LineChart) Save(path string) error {
	if len(c.X) == 0 || len(c.Series) == 0 {
		return fmt.Errorf("line chart %q: nothing to draw", c.Title)
	}
	p := plot.New()
	p.Title.Text = c.Title
	p.X.Label.Text = c.XLabel
	p.Y.Label.Text = c.YLabel
	if c.LogX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if c.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if len(c.XTicks) == len(c.X) {
		ticks := make([]plot.Tick, len(c.X))
		for i := range c.X {
			ticks[i] = plot.Tick{Value: c.X[i], Label: c.XTicks[i]}
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
	}
	for i, s := range c.Series {
		if len(s.Values) != len(c.X) {
			return fmt.Errorf("line chart %q: series %q has %d values for %d x", c.Title, s.Name, len(s.Values), len(c.X))
		}
		pts := make(plotter.XYs, 0, len(c.X))
		for j, v := range s.Values {
			if math.IsNaN(v) || (c.LogY && v <= 0) {
				continue
			}
			pts = append(pts, plotter.XY{X: c.X[j], Y: v})
		}
		if len(pts) == 0 {
			continue
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return fmt.Errorf("line chart %q: %w", c.Title, err)
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		sc.Color = plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		p.Add(l, sc)
		p.Legend.Add(s.Name, l, sc)
	}
	p.Add(plotter.NewGrid())
	legendAbove(p, len(c.Series), c.LogY)
	// Room right of the last point for its tick label.
	if span := p.X.Max - p.X.Min; span > 0 {
		if c.LogX && p.X.Min > 0 {
			p.X.Max *= math.Pow(p.X.Max/p.X.Min, 0.06)
		} else {
			p.X.Max += 0.06 * span
		}
	}
	return save(p, 7*vg.Inch, path)
}

// legendAbove puts the legend in the top left corner and, on a linear Y
// axis, raises the axis so that the legend sits above the data instead of
// over it.
func legendAbove(p *plot.Plot, entries int, logY bool) {
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(8)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	if !logY && p.Y.Max > p.Y.Min {
		p.Y.Max += (0.05 + 0.09*float64(entries)) * (p.Y.Max - p.Y.Min)
		if p.Y.Min > 0 {
			p.Y.Min = 0
		}
	}
}

func save(p *plot.Plot, width vg.Length, path string) error {
	p.BackgroundColor = color.White
	if err := p.Save(width, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("save chart %s: %w", filepath.Base(path), err)
	}
	return nil
}
