package sim

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Photon is one pulse in transit whose light will reach Bob's detector:
// what a quantum link carries from Alice to Bob. Pulses whose photons are
// all lost are not represented. Bit and Basis are the state in flight
// (Alice's choice, or what an eavesdropper resent).
type Photon struct {
	Index     uint64 // pulse index within the frame
	Bit       uint8  // 0 or 1, the encoded value of the state in flight
	Basis     uint8  // quantum.BasisZ or quantum.BasisX of the state in flight
	Intensity uint8  // Alice's intensity index (diagnostics; Bob ignores it)
	Photons   uint8  // photon-number class of the emitted pulse: 1, or 2 for two or more
	// Intercepted marks a photon the eavesdropper measured and resent.
	Intercepted bool
}

// TransitFrame is one frame of photons in transit, in increasing Index order.
type TransitFrame struct {
	Frame   uint64   // frame number
	Pulses  uint64   // pulses Alice emitted in the frame
	Photons []Photon // the pulses that reach Bob
}

// ErrCodec: a transit frame could not be decoded.
var ErrCodec = errors.New("sim: bad transit frame")

// Wire format, version 1 (all integers unsigned LEB128 varints):
//
//	version (byte 1) | frame | pulses | count |
//	count × ( index − previous index − 1 (first: index) | flags byte )
//
// flags: bit 0 = Bit, bit 1 = Basis, bits 2–3 = Intensity, bit 4 = multi-photon,
// bit 5 = intercepted. About 3 bytes per photon at typical gaps.
const wireVersion = 1

// maxFramePhotons bounds the photons accepted in one decoded frame.
const maxFramePhotons = 1 << 28

func packFlags(p Photon) byte {
	f := p.Bit&1 | (p.Basis&1)<<1 | (p.Intensity&3)<<2
	if p.Photons >= 2 {
		f |= 1 << 4
	}
	if p.Intercepted {
		f |= 1 << 5
	}
	return f
}

func unpackFlags(idx uint64, f byte) (Photon, error) {
	if f>>6 != 0 {
		return Photon{}, fmt.Errorf("%w: flags %#x", ErrCodec, f)
	}
	p := Photon{Index: idx, Bit: f & 1, Basis: (f >> 1) & 1, Intensity: (f >> 2) & 3, Photons: 1, Intercepted: f&(1<<5) != 0}
	if f&(1<<4) != 0 {
		p.Photons = 2
	}
	return p, nil
}

// AppendBinary appends the encoding of f to b.
func (f *TransitFrame) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, wireVersion)
	b = binary.AppendUvarint(b, f.Frame)
	b = binary.AppendUvarint(b, f.Pulses)
	b = binary.AppendUvarint(b, uint64(len(f.Photons)))
	next := uint64(0)
	for i, p := range f.Photons {
		if p.Index < next || p.Index >= f.Pulses {
			return nil, fmt.Errorf("%w: photon %d index %d out of order or ≥ %d pulses", ErrCodec, i, p.Index, f.Pulses)
		}
		b = binary.AppendUvarint(b, p.Index-next)
		b = append(b, packFlags(p))
		next = p.Index + 1
	}
	return b, nil
}

// MarshalBinary encodes f.
func (f *TransitFrame) MarshalBinary() ([]byte, error) {
	return f.AppendBinary(make([]byte, 0, 16+3*len(f.Photons)))
}

// byteReader is what decode needs.
type byteReader interface {
	io.ByteReader
}

// decode reads one frame; room is how many photons the input can still
// hold at most (2 bytes each at least), so the photon slice is allocated
// once yet a corrupt header cannot make it allocate gigabytes.
func decode(r byteReader, room uint64) (*TransitFrame, error) {
	v, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if v != wireVersion {
		return nil, fmt.Errorf("%w: version %d", ErrCodec, v)
	}
	f := &TransitFrame{}
	var n uint64
	for _, dst := range []*uint64{&f.Frame, &f.Pulses, &n} {
		if *dst, err = binary.ReadUvarint(r); err != nil {
			return nil, fmt.Errorf("%w: header: %w", ErrCodec, err)
		}
	}
	if n > f.Pulses || n > maxFramePhotons {
		return nil, fmt.Errorf("%w: %d photons for %d pulses", ErrCodec, n, f.Pulses)
	}
	f.Photons = make([]Photon, 0, min(n, room))
	next := uint64(0)
	for i := uint64(0); i < n; i++ {
		d, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("%w: photon %d: %w", ErrCodec, i, err)
		}
		idx := next + d
		if idx < next || idx >= f.Pulses {
			return nil, fmt.Errorf("%w: photon %d index beyond %d pulses", ErrCodec, i, f.Pulses)
		}
		fl, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: photon %d: %w", ErrCodec, i, err)
		}
		ph, err := unpackFlags(idx, fl)
		if err != nil {
			return nil, err
		}
		f.Photons = append(f.Photons, ph)
		next = idx + 1
	}
	return f, nil
}

type sliceReader struct {
	b []byte
	i int
}

func (s *sliceReader) ReadByte() (byte, error) {
	if s.i >= len(s.b) {
		return 0, io.ErrUnexpectedEOF
	}
	c := s.b[s.i]
	s.i++
	return c, nil
}

// UnmarshalBinary decodes data produced by MarshalBinary.
func (f *TransitFrame) UnmarshalBinary(data []byte) error {
	r := &sliceReader{b: data}
	g, err := decode(r, uint64(len(data)/2))
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrCodec) {
			err = fmt.Errorf("%w: %w", ErrCodec, err)
		}
		return err
	}
	if r.i != len(data) {
		return fmt.Errorf("%w: %d trailing bytes", ErrCodec, len(data)-r.i)
	}
	*f = *g
	return nil
}

// WriteFrame writes f to w in the wire format (self-delimiting, so frames
// can follow each other on a stream).
func WriteFrame(w io.Writer, f *TransitFrame) error {
	b, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads one frame written by WriteFrame. At a clean end of stream
// it returns io.EOF.
func ReadFrame(r *bufio.Reader) (*TransitFrame, error) {
	// A stream's length is unknown: grow with the data actually read.
	return decode(r, 1<<16)
}
