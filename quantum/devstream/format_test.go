package devstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"qkdkms/quantum"
)

func testHeader(role Role) Header {
	return Header{
		Role: role, Intensities: []float64{0.5, 0.25, 2e-4}, IntensityProbs: []float64{0.3, 0.5, 0.2},
		PulseRate: 1e9, Device: "test device 7",
	}
}

// randomFrames returns n random Alice frames and matching Bob frames.
func randomFrames(seed uint64, n int, pulses uint64, withDoubles bool) ([]*AliceFrame, []*BobFrame) {
	r := rand.New(rand.NewPCG(seed, 1))
	var as []*AliceFrame
	var bs []*BobFrame
	for i := range n {
		frame := uint64(10 + 3*i)
		a := NewAliceFrame(frame, pulses)
		for j := range pulses {
			a.Set(j, quantum.PulseRecord{Bit: uint8(r.IntN(2)), Basis: uint8(r.IntN(2)), Intensity: uint8(r.IntN(3))})
		}
		b := &BobFrame{Frame: frame, Pulses: pulses}
		for j := uint64(0); j < pulses; j += 1 + uint64(r.IntN(40)) {
			c := Click{Index: j, Basis: uint8(r.IntN(2)), Bit: uint8(r.IntN(2))}
			if withDoubles && r.IntN(10) == 0 {
				c.Double, c.Bit = true, 0
			}
			b.Clicks = append(b.Clicks, c)
		}
		as, bs = append(as, a), append(bs, b)
	}
	return as, bs
}

func encodeAlice(t testing.TB, h Header, fs []*AliceFrame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if err := w.WriteAlice(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func encodeBob(t testing.TB, h Header, fs []*BobFrame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if err := w.WriteBob(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, pulses := range []uint64{1, 2, 7, 1000, 100001} {
		as, bs := randomFrames(pulses, 3, pulses, true)
		ha, hb := testHeader(RoleAlice), testHeader(RoleBob)
		ea, eb := encodeAlice(t, ha, as), encodeBob(t, hb, bs)

		da, err := NewDecoder(bytes.NewReader(ea))
		if err != nil {
			t.Fatal(err)
		}
		ha.Version = Version
		if !reflect.DeepEqual(da.Header(), ha) {
			t.Fatalf("header %+v, want %+v", da.Header(), ha)
		}
		for _, want := range as {
			got, err := da.ReadAlice()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("pulses %d: Alice frame %d differs", pulses, want.Frame)
			}
		}
		if _, err := da.ReadAlice(); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}

		db, err := NewDecoder(bytes.NewReader(eb))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range bs {
			got, err := db.ReadBob()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("pulses %d: Bob frame %d differs", pulses, want.Frame)
			}
		}
		if _, err := db.ReadBob(); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
		t.Logf("%d pulses: Alice %d bytes, Bob %d bytes per 3 frames", pulses, len(ea), len(eb))
	}
}

func TestAliceFrameAccessors(t *testing.T) {
	f := NewAliceFrame(1, 5)
	want := []quantum.PulseRecord{
		{Index: 0, Bit: 1, Basis: 0, Intensity: 0},
		{Index: 1, Bit: 0, Basis: 1, Intensity: 2},
		{Index: 2, Bit: 1, Basis: 1, Intensity: 1},
		{Index: 3, Bit: 0, Basis: 0, Intensity: 2},
		{Index: 4, Bit: 1, Basis: 0, Intensity: 2},
	}
	for _, p := range want {
		f.Set(p.Index, p)
	}
	f.Set(3, want[3]) // overwrite keeps the neighbour
	for _, p := range want {
		if got := f.At(p.Index); got != p {
			t.Errorf("At(%d) = %+v, want %+v", p.Index, got, p)
		}
	}
	if got := f.PerIntensity(3); !reflect.DeepEqual(got, []uint64{1, 1, 3}) {
		t.Errorf("PerIntensity = %v, want [1 1 3]", got)
	}
}

// TestFormatExample builds FORMAT.md's example byte for byte.
func TestFormatExample(t *testing.T) {
	f := NewAliceFrame(1, 3)
	f.Set(0, quantum.PulseRecord{Bit: 1, Basis: quantum.BasisZ, Intensity: 0})
	f.Set(1, quantum.PulseRecord{Bit: 0, Basis: quantum.BasisX, Intensity: 2})
	f.Set(2, quantum.PulseRecord{Bit: 1, Basis: quantum.BasisX, Intensity: 1})
	h := testHeader(RoleAlice)
	h.Device = ""
	got := encodeAlice(t, h, []*AliceFrame{f})

	want := []byte{0x51, 0x4B, 0x44, 0x53, 0x01, 0x01, 0x03, 0x00}
	for _, x := range append(append(append([]float64(nil), h.Intensities...), h.IntensityProbs...), h.PulseRate) {
		want = binary.LittleEndian.AppendUint64(want, math.Float64bits(x))
	}
	want = append(want, 0)
	want = binary.LittleEndian.AppendUint32(want, crc32.ChecksumIEEE(want))
	rec := []byte{0x41, 0x01, 0x03, 0x02, 0xA1, 0x07}
	want = append(want, rec...)
	want = binary.LittleEndian.AppendUint32(want, crc32.ChecksumIEEE(rec))
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding\n% x\nwant\n% x", got, want)
	}
}

// rec frames a record with a correct CRC.
func rec(kind byte, frame, pulses uint64, body []byte) []byte {
	return appendRecord(nil, kind, frame, pulses, body)
}

// uv concatenates uvarints.
func uv(xs ...uint64) []byte {
	var b []byte
	for _, x := range xs {
		b = binary.AppendUvarint(b, x)
	}
	return b
}

func click(delta uint64, double, basis, bit uint64) uint64 {
	return delta<<3 | double<<2 | basis<<1 | bit
}

func withCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
}

func TestDecodeErrors(t *testing.T) {
	hA := appendHeader(nil, testHeader(RoleAlice))
	hB := appendHeader(nil, testHeader(RoleBob))
	goodA := rec(KindAlice, 1, 4, []byte{0x21, 0x43})
	goodB := rec(KindBob, 1, 100, uv(2, click(5, 0, 1, 1), click(7, 0, 0, 0)))
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(b []byte, i int) []byte {
		c := append([]byte(nil), b...)
		if i < 0 {
			i += len(c)
		}
		c[i] ^= 0x10
		return c
	}
	patchHeader := func(role Role, mod func([]byte)) []byte {
		b := appendHeader(nil, testHeader(role))
		b = b[:len(b)-4]
		mod(b)
		return withCRC(b)
	}
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"empty", nil, ErrTruncated},
		{"truncated header", hA[:20], ErrTruncated},
		{"header without CRC", hA[:len(hA)-2], ErrTruncated},
		{"bad magic", patchHeader(RoleAlice, func(b []byte) { b[0] = 'X' }), ErrMagic},
		{"unknown version", patchHeader(RoleAlice, func(b []byte) { b[4] = 2 }), ErrVersion},
		{"bad header CRC", flip(hA, 12), ErrCRC},
		{"unknown role", patchHeader(RoleAlice, func(b []byte) { b[5] = 3 }), ErrFormat},
		{"reserved byte", patchHeader(RoleAlice, func(b []byte) { b[7] = 1 }), ErrFormat},
		{"too many intensities", patchHeader(RoleAlice, func(b []byte) { b[6] = 5 }), ErrFormat},
		{"zero pulse rate", patchHeader(RoleAlice, func(b []byte) {
			binary.LittleEndian.PutUint64(b[8+16*3:], 0)
		}), ErrFormat},
		{"probabilities do not sum to 1", patchHeader(RoleAlice, func(b []byte) {
			binary.LittleEndian.PutUint64(b[8+8*3:], math.Float64bits(0.9))
		}), ErrFormat},
		{"truncated after kind", cat(hA, goodA[:1]), ErrTruncated},
		{"truncated in varints", cat(hA, goodA[:3]), ErrTruncated},
		{"truncated in body", cat(hA, goodA[:5]), ErrTruncated},
		{"truncated in CRC", cat(hA, goodA[:len(goodA)-1]), ErrTruncated},
		{"truncated Bob record", cat(hB, goodB[:len(goodB)-5]), ErrTruncated},
		{"bad record CRC (body)", cat(hA, flip(goodA, 4)), ErrCRC},
		{"bad record CRC (frame number)", cat(hB, flip(goodB, 1)), ErrCRC},
		{"bad record CRC (stored)", cat(hB, flip(goodB, -1)), ErrCRC},
		{"second record bad", cat(hA, goodA, flip(rec(KindAlice, 2, 4, []byte{0, 0}), 5)), ErrCRC},
		{"Bob record in Alice stream", cat(hA, goodB), ErrRole},
		{"Alice record in Bob stream", cat(hB, goodA), ErrRole},
		{"unknown record kind", cat(hA, rec(0x10, 1, 4, []byte{0, 0})), ErrFormat},
		{"varint overflow", cat(hA, []byte{KindAlice}, bytes.Repeat([]byte{0xff}, 10), []byte{1}), ErrFormat},
		{"pulses beyond limit", cat(hA, rec(KindAlice, 1, MaxPulses+1, nil)), ErrFormat},
		{"frame number repeats", cat(hA, goodA, goodA), ErrFrameOrder},
		{"frame number decreases", cat(hB, rec(KindBob, 5, 10, uv(0)), rec(KindBob, 4, 10, uv(0))), ErrFrameOrder},
		{"Alice body too short", cat(hA, rec(KindAlice, 1, 5, []byte{0, 0})), ErrFormat},
		{"Alice body too long", cat(hA, rec(KindAlice, 1, 4, []byte{0, 0, 0})), ErrFormat},
		{"Alice intensity index 3 with K=3 (low nibble)", cat(hA, rec(KindAlice, 1, 4, []byte{0x0c, 0})), ErrFormat},
		{"Alice intensity index 3 with K=3 (high nibble)", cat(hA, rec(KindAlice, 1, 4, []byte{0, 0xc0})), ErrFormat},
		{"Alice padding nibble set", cat(hA, rec(KindAlice, 1, 3, []byte{0, 0x10})), ErrFormat},
		{"first index beyond frame", cat(hB, rec(KindBob, 1, 100, uv(1, click(100, 0, 0, 0)))), ErrIndexRange},
		{"later index beyond frame", cat(hB, rec(KindBob, 1, 100, uv(2, click(60, 0, 0, 0), click(40, 0, 0, 0)))), ErrIndexRange},
		{"index delta overflows", cat(hB, rec(KindBob, 1, 100, uv(2, click(60, 0, 0, 0), click(math.MaxUint64>>3, 0, 0, 0)))), ErrIndexRange},
		{"repeated index", cat(hB, rec(KindBob, 1, 100, uv(2, click(6, 0, 0, 0), click(0, 0, 1, 1)))), ErrIndexOrder},
		{"double click with bit set", cat(hB, rec(KindBob, 1, 100, uv(1, click(6, 1, 0, 1)))), ErrFormat},
		{"detection count beyond body", cat(hB, rec(KindBob, 1, 100, uv(5, click(1, 0, 0, 0)))), ErrFormat},
		{"detection count beyond pulses", cat(hB, rec(KindBob, 1, 2, uv(3, 0, 8, 8))), ErrFormat},
		{"truncated click varint", cat(hB, rec(KindBob, 1, 100, []byte{1, 0x80})), ErrFormat},
		{"trailing bytes in Bob body", cat(hB, rec(KindBob, 1, 100, append(uv(1, click(6, 0, 0, 0)), 0))), ErrFormat},
		{"empty Bob body", cat(hB, rec(KindBob, 1, 100, nil)), ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeAll(tc.stream)
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrFormat) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// decodeAll decodes a whole stream, returning the first error (nil at a
// clean end).
func decodeAll(b []byte) error {
	d, err := NewDecoder(bytes.NewReader(b))
	if err != nil {
		return err
	}
	for {
		if d.Header().Role == RoleAlice {
			_, err = d.ReadAlice()
		} else {
			_, err = d.ReadBob()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func TestExtensionRecordsSkipped(t *testing.T) {
	as, _ := randomFrames(3, 2, 11, false)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testHeader(RoleAlice))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteExtension(0x90, []byte("temperature=21.5C")); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAlice(as[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteExtension(0xff, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAlice(as[1]); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteExtension(0x10, nil); !errors.Is(err, ErrFormat) {
		t.Fatalf("extension kind 0x10: %v, want ErrFormat", err)
	}
	d, err := NewDecoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range as {
		got, err := d.ReadAlice()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("frame %d: %v", want.Frame, err)
		}
	}
	if _, err := d.ReadAlice(); err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
}

func TestWriterRejects(t *testing.T) {
	var buf bytes.Buffer
	if _, err := NewWriter(&buf, Header{Role: RoleAlice, PulseRate: 1}); !errors.Is(err, ErrFormat) {
		t.Errorf("Alice header without intensities: %v", err)
	}
	if _, err := NewWriter(&buf, Header{Role: RoleBob, PulseRate: 1, Device: strings.Repeat("x", 256)}); !errors.Is(err, ErrFormat) {
		t.Errorf("long device name: %v", err)
	}
	wb, err := NewWriter(&buf, testHeader(RoleBob))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		f    *BobFrame
		want error
	}{
		{"index beyond", &BobFrame{Frame: 1, Pulses: 5, Clicks: []Click{{Index: 5}}}, ErrIndexRange},
		{"not increasing", &BobFrame{Frame: 1, Pulses: 5, Clicks: []Click{{Index: 3}, {Index: 3}}}, ErrIndexOrder},
		{"double with bit", &BobFrame{Frame: 1, Pulses: 5, Clicks: []Click{{Index: 3, Double: true, Bit: 1}}}, ErrFormat},
	}
	for _, c := range cases {
		if err := wb.WriteBob(c.f); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if err := wb.WriteBob(&BobFrame{Frame: 4, Pulses: 5}); err != nil {
		t.Fatal(err)
	}
	if err := wb.WriteBob(&BobFrame{Frame: 4, Pulses: 5}); !errors.Is(err, ErrFrameOrder) {
		t.Errorf("repeated frame: %v", err)
	}
	if err := wb.WriteAlice(NewAliceFrame(9, 2)); !errors.Is(err, ErrRole) {
		t.Errorf("Alice frame to Bob stream: %v", err)
	}
}

func TestDump(t *testing.T) {
	as, bs := randomFrames(5, 2, 9, true)
	var out strings.Builder
	if err := Dump(&out, bytes.NewReader(encodeAlice(t, testHeader(RoleAlice), as)), 3); err != nil {
		t.Fatal(err)
	}
	if err := Dump(&out, bytes.NewReader(encodeBob(t, testHeader(RoleBob), bs)), -1); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	t.Log("\n" + s)
	for _, want := range []string{
		`qkds 1 alice device="test device 7" rate=1e+09 mu=[0.5 0.25 0.0002] p=[0.3 0.5 0.2]`,
		"frame 10 pulses 9 per_intensity=", "frame 13 pulses 9", "qkds 1 bob",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("dump lacks %q", want)
		}
	}
	if n := strings.Count(s, "\np "); n != 6 {
		t.Errorf("%d pulse lines, want 3 per frame", n)
	}
	clicks := len(bs[0].Clicks) + len(bs[1].Clicks)
	if n := strings.Count(s, "\nd "); n != clicks {
		t.Errorf("%d detection lines, want %d", n, clicks)
	}
	b := encodeBob(t, testHeader(RoleBob), bs)
	if err := Dump(io.Discard, bytes.NewReader(b[:len(b)-3]), 0); !errors.Is(err, ErrTruncated) {
		t.Errorf("dump of a truncated stream: %v", err)
	}
}

// TestAliceCheckIntensities: an intensity index ≥ K is found wherever it
// is in a long frame (the 8-byte fast path and the tail) and named.
func TestAliceCheckIntensities(t *testing.T) {
	const pulses = 101
	for k := 1; k <= MaxIntensities; k++ {
		for _, pos := range []uint64{0, 1, 14, 15, 16, 63, 64, 97, 100} {
			for idx := uint8(0); idx < MaxIntensities; idx++ {
				f := NewAliceFrame(5, pulses)
				for i := range uint64(pulses) {
					f.Set(i, quantum.PulseRecord{Bit: uint8(i & 1), Basis: uint8(i>>1) & 1, Intensity: uint8(i % uint64(k))})
				}
				f.Set(pos, quantum.PulseRecord{Bit: 1, Basis: 1, Intensity: idx})
				err := f.check(k)
				want := fmt.Sprintf("pulse %d: intensity index %d", pos, idx)
				if int(idx) < k && err != nil {
					t.Fatalf("K=%d, index %d at pulse %d: %v", k, idx, pos, err)
				}
				if int(idx) >= k && (!errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), want)) {
					t.Fatalf("K=%d, index %d at pulse %d: %v, want %q", k, idx, pos, err, want)
				}
			}
		}
	}
}
