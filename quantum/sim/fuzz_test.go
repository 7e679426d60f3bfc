package sim

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzTransitFrame: whatever arrives on a quantum-link connection, decoding
// never panics, and what decodes re-encodes to the same bytes.
func FuzzTransitFrame(f *testing.F) {
	good, _ := (&TransitFrame{Frame: 3, Pulses: 100, Photons: []Photon{
		{Index: 0, Bit: 1, Basis: 0, Intensity: 2, Photons: 1},
		{Index: 57, Bit: 0, Basis: 1, Intensity: 0, Photons: 2, Intercepted: true},
	}}).MarshalBinary()
	f.Add(good)
	f.Add([]byte{1, 0, 5, 1, 7, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr TransitFrame
		if err := fr.UnmarshalBinary(data); err != nil {
			_, _ = ReadFrame(bufio.NewReader(bytes.NewReader(data)))
			return
		}
		again, err := fr.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
		var back TransitFrame
		if err := back.UnmarshalBinary(again); err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if back.Frame != fr.Frame || back.Pulses != fr.Pulses || len(back.Photons) != len(fr.Photons) {
			t.Fatal("round trip changed the frame")
		}
	})
}
