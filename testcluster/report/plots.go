package report

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"qkdkms/testcluster/history"
)

var (
	colOK    = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colFail  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colAmb   = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	colFault = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	colHeal  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
)

// WritePlots draws latency over time (fault marked), throughput and pool
// levels for one scenario into dir and returns the file paths.
func WritePlots(dir, name string, h *history.History, pool []PoolSample) ([]string, error) {
	ops := h.Ops()
	events := h.Events()
	t0 := h.Start
	since := func(op history.Op) float64 { return op.Start.Sub(t0).Seconds() }
	var out []string

	// Latency over time.
	p := plot.New()
	p.Title.Text = name + ": enc_keys / dec_keys latency"
	p.X.Label.Text = "time since start (s)"
	p.Y.Label.Text = "latency (ms)"
	series := map[history.Outcome]plotter.XYs{}
	maxLat := 1.0
	for _, o := range ops {
		if o.Drain {
			continue
		}
		ms := float64(o.Latency().Microseconds()) / 1000
		series[o.Outcome] = append(series[o.Outcome], plotter.XY{X: since(o), Y: ms})
		maxLat = math.Max(maxLat, ms)
	}
	for _, s := range []struct {
		o   history.Outcome
		c   color.Color
		sh  draw.GlyphDrawer
		lbl string
	}{{history.OK, colOK, draw.CircleGlyph{}, "ok"}, {history.Failed, colFail, draw.CrossGlyph{}, "error"}, {history.Ambiguous, colAmb, draw.TriangleGlyph{}, "ambiguous"}} {
		if len(series[s.o]) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(series[s.o])
		if err != nil {
			return out, err
		}
		sc.GlyphStyle.Color, sc.GlyphStyle.Shape, sc.GlyphStyle.Radius = s.c, s.sh, vg.Points(1.5)
		p.Add(sc)
		p.Legend.Add(s.lbl, sc)
	}
	if err := markEvents(p, events, t0, maxLat); err != nil {
		return out, err
	}
	if f, err := savePlot(p, dir, name+"-latency.png"); err != nil {
		return out, err
	} else {
		out = append(out, f)
	}

	// Throughput: successful calls per second, by kind.
	p = plot.New()
	p.Title.Text = name + ": successful calls per second"
	p.X.Label.Text = "time since start (s)"
	p.Y.Label.Text = "calls/s"
	maxT := 1.0
	for _, k := range []struct {
		kind history.OpKind
		c    color.Color
	}{{history.OpEnc, colOK}, {history.OpDec, colHeal}} {
		bins := map[int]float64{}
		last := 0
		for _, o := range ops {
			if o.Kind != k.kind || o.Outcome != history.OK {
				continue
			}
			s := int(o.End.Sub(t0).Seconds())
			bins[s]++
			last = max(last, s)
		}
		if len(bins) == 0 {
			continue
		}
		xys := make(plotter.XYs, last+1)
		for i := range xys {
			xys[i] = plotter.XY{X: float64(i), Y: bins[i]}
			maxT = math.Max(maxT, bins[i])
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return out, err
		}
		l.Color = k.c
		p.Add(l)
		p.Legend.Add(string(k.kind), l)
	}
	if err := markEvents(p, events, t0, maxT); err != nil {
		return out, err
	}
	if f, err := savePlot(p, dir, name+"-throughput.png"); err != nil {
		return out, err
	} else {
		out = append(out, f)
	}

	// Pool levels per site.
	if len(pool) > 0 {
		p = plot.New()
		p.Title.Text = name + ": pool level (stored keys, leader's view)"
		p.X.Label.Text = "time since start (s)"
		p.Y.Label.Text = "keys"
		bySite := map[string]plotter.XYs{}
		var sites []string
		maxP := 1.0
		for _, s := range pool {
			if _, ok := bySite[s.Site]; !ok {
				sites = append(sites, s.Site)
			}
			bySite[s.Site] = append(bySite[s.Site], plotter.XY{X: s.At.Sub(t0).Seconds(), Y: s.Stored})
			maxP = math.Max(maxP, s.Stored)
		}
		for i, site := range sites {
			l, err := plotter.NewLine(bySite[site])
			if err != nil {
				return out, err
			}
			l.Color = []color.Color{colOK, colAmb}[i%2]
			p.Add(l)
			p.Legend.Add(site, l)
		}
		if err := markEvents(p, events, t0, maxP); err != nil {
			return out, err
		}
		if f, err := savePlot(p, dir, name+"-pool.png"); err != nil {
			return out, err
		} else {
			out = append(out, f)
		}
	}
	return out, nil
}

// markEvents draws a vertical line per fault (grey) and heal (green).
func markEvents(p *plot.Plot, events []history.Event, t0 time.Time, top float64) error {
	for _, e := range events {
		x := e.At.Sub(t0).Seconds()
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top}})
		if err != nil {
			return err
		}
		switch e.Kind {
		case history.EventFault:
			l.Color = colFault
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		case history.EventHeal:
			l.Color = colHeal
			l.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		default:
			continue
		}
		p.Add(l)
	}
	return nil
}

func savePlot(p *plot.Plot, dir, file string) (string, error) {
	path := filepath.Join(dir, file)
	if err := p.Save(8*vg.Inch, 4*vg.Inch, path); err != nil {
		return "", fmt.Errorf("plot %s: %w", file, err)
	}
	return path, nil
}
