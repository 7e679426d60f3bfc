package devstream

import (
	"fmt"
	"io"
)

// Writer writes a device stream: the header, then one record per frame in
// increasing frame order. It is what a device (or a bridge from a vendor's
// export) produces, and what Record uses to record the simulator. Each
// record is written with a single Write call. It is not safe for concurrent
// use.
type Writer struct {
	w         io.Writer
	h         Header
	lastFrame uint64
	seen      bool
	buf       []byte
}

// NewWriter validates h and writes the stream header.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	h.Version = Version
	if err := h.Validate(); err != nil {
		return nil, err
	}
	h.Intensities = append([]float64(nil), h.Intensities...)
	h.IntensityProbs = append([]float64(nil), h.IntensityProbs...)
	if _, err := w.Write(appendHeader(nil, h)); err != nil {
		return nil, fmt.Errorf("devstream: write header: %w", err)
	}
	return &Writer{w: w, h: h}, nil
}

// Header returns the header written.
func (w *Writer) Header() Header { return w.h }

func (w *Writer) frameCheck(role Role, frame, pulses uint64) error {
	if w.h.Role != role {
		return fmt.Errorf("%w: writing a %s frame to a %s stream", ErrRole, role, w.h.Role)
	}
	if w.seen && frame <= w.lastFrame {
		return fmt.Errorf("%w: frame %d after frame %d", ErrFrameOrder, frame, w.lastFrame)
	}
	if pulses > MaxPulses {
		return fmt.Errorf("%w: frame %d: %d pulses, at most %d", ErrFormat, frame, pulses, uint64(MaxPulses))
	}
	return nil
}

func (w *Writer) emit(kind byte, frame, pulses uint64, body []byte) error {
	w.buf = appendRecord(w.buf[:0], kind, frame, pulses, body)
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("devstream: write frame %d: %w", frame, err)
	}
	w.seen, w.lastFrame = true, frame
	return nil
}

// WriteAlice writes an Alice frame record.
func (w *Writer) WriteAlice(f *AliceFrame) error {
	if err := w.frameCheck(RoleAlice, f.Frame, f.Pulses); err != nil {
		return err
	}
	if err := f.check(len(w.h.Intensities)); err != nil {
		return err
	}
	return w.emit(KindAlice, f.Frame, f.Pulses, f.Packed)
}

// WriteBob writes a Bob frame record. Clicks must be in increasing index
// order, below Pulses, with Bit 0 on double clicks.
func (w *Writer) WriteBob(f *BobFrame) error {
	if err := w.frameCheck(RoleBob, f.Frame, f.Pulses); err != nil {
		return err
	}
	body, err := appendClicks(make([]byte, 0, len(f.Clicks)+8), f)
	if err != nil {
		return err
	}
	return w.emit(KindBob, f.Frame, f.Pulses, body)
}

// WriteExtension writes an extension record (kind 0x80..0xff), which
// version 1 readers skip: device telemetry, timestamps and the like.
func (w *Writer) WriteExtension(kind byte, body []byte) error {
	if kind < kindExtension {
		return fmt.Errorf("%w: extension kind %#x < 0x80", ErrFormat, kind)
	}
	if uint64(len(body)) > MaxBody {
		return fmt.Errorf("%w: extension body of %d bytes", ErrFormat, len(body))
	}
	w.buf = appendRecord(w.buf[:0], kind, 0, 0, body)
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("devstream: write extension: %w", err)
	}
	return nil
}
