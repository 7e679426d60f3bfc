package devstream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
)

// Decoder reads a device stream strictly: every malformed byte is an error
// wrapping ErrFormat, and nothing is returned from a record whose CRC does
// not match. It is not safe for concurrent use.
type Decoder struct {
	br        *bufio.Reader
	h         Header
	lastFrame uint64
	seen      bool
	crc       uint32 // running CRC of the current record
}

// NewDecoder reads and checks the stream header.
func NewDecoder(r io.Reader) (*Decoder, error) {
	d := &Decoder{br: bufio.NewReaderSize(r, 1<<16)}
	h, err := d.readHeader()
	if err != nil {
		return nil, err
	}
	d.h = h
	return d, nil
}

// Header returns the stream header.
func (d *Decoder) Header() Header { return d.h }

func truncated(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s", ErrTruncated, what)
	}
	return fmt.Errorf("devstream: reading %s: %w", what, err)
}

func (d *Decoder) full(b []byte, what string) error {
	if _, err := io.ReadFull(d.br, b); err != nil {
		return truncated(what, err)
	}
	d.crc = crc32.Update(d.crc, crcTable, b)
	return nil
}

func (d *Decoder) uvarint(what string) (uint64, error) {
	var x uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		c, err := d.br.ReadByte()
		if err != nil {
			return 0, truncated(what, err)
		}
		d.crc = crc32.Update(d.crc, crcTable, []byte{c})
		if i == binary.MaxVarintLen64-1 && c > 1 {
			break
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, nil
		}
	}
	return 0, fmt.Errorf("%w: %s: varint overflows 64 bits", ErrFormat, what)
}

func (d *Decoder) checkCRC(what string) error {
	want := d.crc
	var b [4]byte
	if _, err := io.ReadFull(d.br, b[:]); err != nil {
		return truncated(what+" CRC", err)
	}
	if got := binary.LittleEndian.Uint32(b[:]); got != want {
		return fmt.Errorf("%w: %s: stored %08x, computed %08x", ErrCRC, what, got, want)
	}
	return nil
}

func (d *Decoder) readHeader() (Header, error) {
	d.crc = 0
	var fixed [8]byte
	if err := d.full(fixed[:], "header"); err != nil {
		return Header{}, err
	}
	if string(fixed[:4]) != Magic {
		return Header{}, fmt.Errorf("%w: % x", ErrMagic, fixed[:4])
	}
	if fixed[4] != Version {
		return Header{}, fmt.Errorf("%w: version %d, this reader knows %d", ErrVersion, fixed[4], Version)
	}
	h := Header{Version: fixed[4], Role: Role(fixed[5])}
	k := int(fixed[6])
	if k > MaxIntensities {
		return Header{}, fmt.Errorf("%w: header: %d intensities, at most %d", ErrFormat, k, MaxIntensities)
	}
	if fixed[7] != 0 {
		return Header{}, fmt.Errorf("%w: header: reserved byte %#x", ErrFormat, fixed[7])
	}
	floats := make([]byte, 16*k+8+1)
	if err := d.full(floats, "header"); err != nil {
		return Header{}, err
	}
	f := func(i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(floats[8*i:])) }
	for i := 0; i < k; i++ {
		h.Intensities = append(h.Intensities, f(i))
		h.IntensityProbs = append(h.IntensityProbs, f(k+i))
	}
	h.PulseRate = f(2 * k)
	dev := make([]byte, floats[len(floats)-1])
	if err := d.full(dev, "header"); err != nil {
		return Header{}, err
	}
	h.Device = string(dev)
	if err := d.checkCRC("header"); err != nil {
		return Header{}, err
	}
	if err := h.Validate(); err != nil {
		return Header{}, err
	}
	return h, nil
}

// recordHead is the part of a record before its body.
type recordHead struct {
	kind          byte
	frame, pulses uint64
	n             uint64 // body length
}

// readRecord reads the next frame record of the stream's role, skipping
// extension records. It returns io.EOF at a clean end of stream.
func (d *Decoder) readRecord() (recordHead, []byte, error) {
	for {
		d.crc = 0
		kind, err := d.br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return recordHead{}, nil, io.EOF
			}
			return recordHead{}, nil, truncated("record", err)
		}
		d.crc = crc32.Update(d.crc, crcTable, []byte{kind})
		if kind != d.h.Role.kind() && kind < kindExtension {
			if kind == KindAlice || kind == KindBob {
				return recordHead{}, nil, fmt.Errorf("%w: %q record in a stream of role %s", ErrRole, kind, d.h.Role)
			}
			return recordHead{}, nil, fmt.Errorf("%w: unknown record type %#x", ErrFormat, kind)
		}
		rh := recordHead{kind: kind}
		if rh.frame, err = d.uvarint("record frame number"); err != nil {
			return rh, nil, err
		}
		if rh.pulses, err = d.uvarint("record pulse count"); err != nil {
			return rh, nil, err
		}
		if rh.n, err = d.uvarint("record length"); err != nil {
			return rh, nil, err
		}
		if rh.pulses > MaxPulses || rh.n > MaxBody {
			return rh, nil, fmt.Errorf("%w: frame %d: %d pulses, %d-byte body: beyond the limits %d and %d", ErrFormat, rh.frame, rh.pulses, rh.n, uint64(MaxPulses), uint64(MaxBody))
		}
		body, err := d.body(rh.n, fmt.Sprintf("frame %d record body", rh.frame))
		if err != nil {
			return rh, nil, err
		}
		if err := d.checkCRC(fmt.Sprintf("frame %d record", rh.frame)); err != nil {
			return rh, nil, err
		}
		if kind >= kindExtension {
			continue
		}
		if d.seen && rh.frame <= d.lastFrame {
			return rh, nil, fmt.Errorf("%w: frame %d after frame %d", ErrFrameOrder, rh.frame, d.lastFrame)
		}
		d.seen, d.lastFrame = true, rh.frame
		return rh, body, nil
	}
}

// body reads n bytes. A body up to 16 MiB is read into one allocation; a
// longer one grows as data arrives, so that a corrupt length cannot
// allocate much more than the stream holds.
func (d *Decoder) body(n uint64, what string) ([]byte, error) {
	const step = 1 << 24
	if n <= step {
		buf := make([]byte, n)
		if err := d.full(buf, what); err != nil {
			return nil, err
		}
		return buf, nil
	}
	buf := make([]byte, 0, step)
	for uint64(len(buf)) < n {
		old := len(buf)
		buf = append(buf, make([]byte, min(n-uint64(old), step))...)
		if err := d.full(buf[old:], what); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// ReadAlice reads the next record of an Alice stream. It returns io.EOF at
// a clean end of stream.
func (d *Decoder) ReadAlice() (*AliceFrame, error) {
	if d.h.Role != RoleAlice {
		return nil, fmt.Errorf("%w: ReadAlice on a %s stream", ErrRole, d.h.Role)
	}
	rh, body, err := d.readRecord()
	if err != nil {
		return nil, err
	}
	f := &AliceFrame{Frame: rh.frame, Pulses: rh.pulses, Packed: body}
	if err := f.check(len(d.h.Intensities)); err != nil {
		return nil, err
	}
	return f, nil
}

// ReadBob reads the next record of a Bob stream. It returns io.EOF at a
// clean end of stream.
func (d *Decoder) ReadBob() (*BobFrame, error) {
	if d.h.Role != RoleBob {
		return nil, fmt.Errorf("%w: ReadBob on a %s stream", ErrRole, d.h.Role)
	}
	rh, body, err := d.readRecord()
	if err != nil {
		return nil, err
	}
	clicks, err := decodeClicks(rh.frame, rh.pulses, body)
	if err != nil {
		return nil, err
	}
	return &BobFrame{Frame: rh.frame, Pulses: rh.pulses, Clicks: clicks}, nil
}
