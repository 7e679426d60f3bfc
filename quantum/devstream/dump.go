package devstream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Dump decodes a device stream and writes it as text, one line per item,
// for debugging a device's export (FORMAT.md, "Text dump"):
//
//	qkds 1 alice device="..." rate=1e+09 mu=[0.5 0.25 0.0002] p=[0.3 0.5 0.2]
//	frame 1 pulses 500000 per_intensity=[150092 249888 100020]
//	p 0 bit=1 basis=Z int=1
//	frame 1 pulses 500000 detections 94599 double=0
//	d 17 basis=X bit=0
//	d 23 basis=Z double
//
// At most perFrame pulse (p) or detection (d) lines are written per frame
// (negative: all). It stops at the end of the stream or at the first
// decoding error, which it returns.
func Dump(w io.Writer, r io.Reader, perFrame int) error {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	d, err := NewDecoder(r)
	if err != nil {
		return err
	}
	h := d.Header()
	fmt.Fprintf(bw, "qkds %d %s device=%q rate=%g mu=%v p=%v\n", h.Version, h.Role, h.Device, h.PulseRate, h.Intensities, h.IntensityProbs)
	basis := [2]string{"Z", "X"}
	lim := func(n uint64) uint64 {
		if perFrame < 0 || uint64(perFrame) > n {
			return n
		}
		return uint64(perFrame)
	}
	for {
		switch h.Role {
		case RoleAlice:
			f, err := d.ReadAlice()
			if err != nil {
				return dumpEnd(err)
			}
			fmt.Fprintf(bw, "frame %d pulses %d per_intensity=%v\n", f.Frame, f.Pulses, f.PerIntensity(len(h.Intensities)))
			for i := range lim(f.Pulses) {
				p := f.At(i)
				fmt.Fprintf(bw, "p %d bit=%d basis=%s int=%d\n", i, p.Bit, basis[p.Basis], p.Intensity)
			}
		default:
			f, err := d.ReadBob()
			if err != nil {
				return dumpEnd(err)
			}
			doubles := 0
			for _, c := range f.Clicks {
				if c.Double {
					doubles++
				}
			}
			fmt.Fprintf(bw, "frame %d pulses %d detections %d double=%d\n", f.Frame, f.Pulses, len(f.Clicks), doubles)
			for _, c := range f.Clicks[:lim(uint64(len(f.Clicks)))] {
				if c.Double {
					fmt.Fprintf(bw, "d %d basis=%s double\n", c.Index, basis[c.Basis])
				} else {
					fmt.Fprintf(bw, "d %d basis=%s bit=%d\n", c.Index, basis[c.Basis], c.Bit)
				}
			}
		}
	}
}

func dumpEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
