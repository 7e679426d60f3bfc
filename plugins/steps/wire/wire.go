// Package wire is the little-endian binary codec the steps use for their
// inputs, outputs and messages. A Reader is sticky: after the first error
// every read returns zero and Err reports the error.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"qkdkms/plugins/steps/bits"
)

// ErrShort: the buffer ended early or had trailing bytes.
var ErrShort = errors.New("wire: malformed buffer")

// Writer appends values to a byte slice.
type Writer struct{ B []byte }

func (w *Writer) U8(x uint8)   { w.B = append(w.B, x) }
func (w *Writer) U32(x uint32) { w.B = binary.LittleEndian.AppendUint32(w.B, x) }
func (w *Writer) U64(x uint64) { w.B = binary.LittleEndian.AppendUint64(w.B, x) }
func (w *Writer) F64(x float64) {
	w.B = binary.LittleEndian.AppendUint64(w.B, math.Float64bits(x))
}

// Bytes writes a u32 length and the bytes.
func (w *Writer) Bytes(b []byte) { w.U32(uint32(len(b))); w.B = append(w.B, b...) }

// Vec writes a u32 bit count and ceil(n/8) bytes.
func (w *Writer) Vec(v bits.Vec) { w.U32(uint32(v.N)); w.B = append(w.B, v.Bytes()...) }

// Reader consumes values from a byte slice.
type Reader struct {
	B   []byte
	err error
}

func (r *Reader) fail(n int) bool {
	if r.err != nil {
		return true
	}
	if len(r.B) < n {
		r.err = fmt.Errorf("%w: need %d bytes, have %d", ErrShort, n, len(r.B))
		return true
	}
	return false
}

func (r *Reader) U8() uint8 {
	if r.fail(1) {
		return 0
	}
	x := r.B[0]
	r.B = r.B[1:]
	return x
}

func (r *Reader) U32() uint32 {
	if r.fail(4) {
		return 0
	}
	x := binary.LittleEndian.Uint32(r.B)
	r.B = r.B[4:]
	return x
}

func (r *Reader) U64() uint64 {
	if r.fail(8) {
		return 0
	}
	x := binary.LittleEndian.Uint64(r.B)
	r.B = r.B[8:]
	return x
}

func (r *Reader) F64() float64 { return math.Float64frombits(r.U64()) }

// Raw returns the next n bytes (aliasing the buffer).
func (r *Reader) Raw(n int) []byte {
	if n < 0 {
		r.err = fmt.Errorf("%w: negative length", ErrShort)
	}
	if r.fail(n) {
		return nil
	}
	b := r.B[:n:n]
	r.B = r.B[n:]
	return b
}

// Bytes reads a u32 length and that many bytes (aliasing the buffer).
func (r *Reader) Bytes() []byte { return r.Raw(int(r.U32())) }

// Vec reads a vector written by Writer.Vec.
func (r *Reader) Vec() bits.Vec {
	n := int(r.U32())
	if r.err != nil {
		return bits.Vec{}
	}
	b := r.Raw((n + 7) / 8)
	if r.err != nil {
		return bits.Vec{}
	}
	v, err := bits.FromBytes(b, n)
	if err != nil {
		r.err = err
	}
	return v
}

// Err returns the first error.
func (r *Reader) Err() error { return r.err }

// Done returns the first error, or ErrShort if bytes are left over.
func (r *Reader) Done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.B) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrShort, len(r.B))
	}
	return nil
}
