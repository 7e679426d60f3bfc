package devstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/session"
	"qkdkms/quantum/sim"
)

var update = flag.Bool("update", false, "re-record testdata/alice.qkds, bob.qkds and recording.json from the simulator")

// recording is testdata/recording.json: how the pair was recorded and what
// it holds.
type recording struct {
	Note    string      `json:"note"`
	Model   sim.Model   `json:"model"`
	Seed    uint64      `json:"seed"`
	Frames  int         `json:"frames"`
	Pulses  uint64      `json:"pulses"`
	Truth   []Truth     `json:"truth"`
	QBER    []qberEntry `json:"qber"`
	Command string      `json:"command"`
}

type qberEntry struct {
	Frame uint64  `json:"frame"`
	Z     float64 `json:"z"`
	X     float64 `json:"x"`
}

// testdataOptions: a short link (0 km) with SNSPD-class detectors
// (η_det 0.8), so that a frame of 5·10^5 pulses gives n_Z ≈ 4.6·10^4
// sifted key bits — enough for a finite key of a few thousand bits
// (ε_sec 1e-9) — in ~350 KB of records per frame.
func testdataOptions() RecordOptions {
	m := sim.DefaultModel()
	m.FiberKm = 0
	m.DetectorEff = 0.8
	return RecordOptions{Model: m, Seed: 2, FirstFrame: 1, Frames: 2, Pulses: 500000, Device: "qkdkms sim (devstream testdata)"}
}

const (
	aliceFile = "testdata/alice.qkds"
	bobFile   = "testdata/bob.qkds"
	metaFile  = "testdata/recording.json"
)

// TestRecord re-records testdata with -update. Without it, it records a
// small pair in memory and checks what Record reports against the streams,
// and that the committed recording.json says what the committed streams
// hold.
func TestRecord(t *testing.T) {
	ctx := context.Background()
	if *update {
		o := testdataOptions()
		var a, b bytes.Buffer
		truth, err := Record(ctx, o, &a, &b)
		if err != nil {
			t.Fatal(err)
		}
		meta := recording{
			Note:  "Recorded from quantum/sim by devstream.Record; QBER is computed from both streams (Compare).",
			Model: o.Model, Seed: o.Seed, Frames: o.Frames, Pulses: o.Pulses, Truth: truth,
			Command: "go test ./quantum/devstream -run TestRecord -update",
		}
		for _, tr := range truth {
			meta.QBER = append(meta.QBER, qberEntry{Frame: tr.Frame, Z: tr.QBERZ(), X: tr.QBERX()})
		}
		js, err := json.MarshalIndent(meta, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []struct {
			name string
			data []byte
		}{{aliceFile, a.Bytes()}, {bobFile, b.Bytes()}, {metaFile, append(js, '\n')}} {
			if err := os.WriteFile(f.name, f.data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("recorded %d frames of %d pulses: Alice %d bytes, Bob %d bytes; %+v", o.Frames, o.Pulses, a.Len(), b.Len(), truth)
	}

	// a small fresh recording is internally consistent
	o := testdataOptions()
	o.Pulses, o.Frames, o.FirstFrame = 30000, 3, 5
	var a, b bytes.Buffer
	truth, err := Record(ctx, o, &a, &b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Compare(bytes.NewReader(a.Bytes()), bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, truth) || len(got) != 3 || got[0].Frame != 5 || got[2].Frame != 7 {
		t.Fatalf("Compare = %+v, Record said %+v", got, truth)
	}
	for _, tr := range truth {
		if tr.Pulses != o.Pulses || tr.Detections == 0 || tr.SiftedZ == 0 || tr.SiftedX == 0 || tr.Doubles != 0 {
			t.Fatalf("implausible frame %+v", tr)
		}
		if q := tr.QBERZ(); q < 0.002 || q > 0.03 {
			t.Fatalf("frame %d: QBER_Z %.4f, the model gives about 1%%", tr.Frame, q)
		}
	}
	// recording twice with the same seed gives the same bytes
	var a2, b2 bytes.Buffer
	if _, err := Record(ctx, o, &a2, &b2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), a2.Bytes()) || !bytes.Equal(b.Bytes(), b2.Bytes()) {
		t.Fatal("recording is not reproducible")
	}

	// the committed recording.json describes the committed streams
	meta := loadRecording(t)
	ta, tb := readTestdata(t)
	committed, err := Compare(bytes.NewReader(ta), bytes.NewReader(tb))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(committed, meta.Truth) {
		t.Fatalf("recording.json says %+v, the streams hold %+v (re-record with -update)", meta.Truth, committed)
	}
}

func loadRecording(t *testing.T) recording {
	t.Helper()
	js, err := os.ReadFile(metaFile)
	if err != nil {
		t.Fatalf("%v (record it with: go test ./quantum/devstream -run TestRecord -update)", err)
	}
	var meta recording
	if err := json.Unmarshal(js, &meta); err != nil {
		t.Fatal(err)
	}
	return meta
}

func readTestdata(t testing.TB) (alice, bob []byte) {
	t.Helper()
	a, err := os.ReadFile(aliceFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bobFile)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func partyRand(label string, frame uint64) io.Reader {
	var k [32]byte
	binary.LittleEndian.PutUint64(k[:8], frame)
	copy(k[8:], label)
	return rand.NewChaCha8(k)
}

// runSession runs one BB84 session over an in-process classical channel
// with the native step plugins, as quantum/simrun does.
func runSession(t *testing.T, tx quantum.Transmitter, rx quantum.Receiver, frame, pulses uint64, probs []float64) (ra, rb session.Result, errA, errB error) {
	t.Helper()
	ctx := context.Background()
	runner, err := host.Native(host.Selection{})
	if err != nil {
		t.Fatal(err)
	}
	ca, cb := quantum.Pipe()
	defer ca.Close()
	defer cb.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := session.Config{Runner: runner, TagBits: 64, EpsSec: 1e-9, Timeout: 2 * time.Minute, Logger: quiet}
	cfgA, cfgB := base, base
	cfgA.Pulses, cfgA.IntensityProbs = pulses, probs
	cfgA.Rand = partyRand("alice", frame)
	cfgB.Rand = partyRand("bob", frame)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rb, errB = session.Bob(ctx, cfgB, rx, cb)
	}()
	ra, errA = session.Alice(ctx, cfgA, tx, ca, frame)
	if errA != nil {
		ca.Close()
	}
	wg.Wait()
	return ra, rb, errA, errB
}

// TestSessionFromRecording runs full BB84 sessions on the recorded device
// streams: both parties get the same key, and the QBER the session measures
// is the QBER the recording holds.
func TestSessionFromRecording(t *testing.T) {
	ctx := context.Background()
	meta := loadRecording(t)
	ta, tb := readTestdata(t)
	t.Logf("testdata: Alice stream %d bytes, Bob stream %d bytes, %d frames of %d pulses", len(ta), len(tb), meta.Frames, meta.Pulses)
	tx, err := NewTransmitter(ctx, bytes.NewReader(ta), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rx, err := NewReceiver(ctx, bytes.NewReader(tb), Options{Rand: partyRand("squash", 0), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range meta.Truth {
		frame, pulses, err := tx.Next(ctx)
		if err != nil || frame != want.Frame || pulses != want.Pulses {
			t.Fatalf("Next = %d, %d, %v; recording.json has frame %d of %d", frame, pulses, err, want.Frame, want.Pulses)
		}
		ra, rb, errA, errB := runSession(t, tx, rx, frame, pulses, tx.Header().IntensityProbs)
		if errA != nil || errB != nil {
			t.Fatalf("frame %d: Alice %v, Bob %v", frame, errA, errB)
		}
		if ra.FinalBits == 0 || ra.FinalBits != rb.FinalBits || !bytes.Equal(ra.Key, rb.Key) {
			t.Fatalf("frame %d: keys differ or empty (%d and %d bits)", frame, ra.FinalBits, rb.FinalBits)
		}
		if ra.Pulses != pulses || ra.Detections != want.Detections || rb.Detections != want.Detections {
			t.Errorf("frame %d: %d pulses %d/%d detections, recorded %d/%d", frame, ra.Pulses, ra.Detections, rb.Detections, want.Pulses, want.Detections)
		}
		if uint64(ra.SiftedBits) != want.SiftedZ || uint64(ra.TestBits) != want.SiftedX {
			t.Errorf("frame %d: n_Z %d n_X %d, recorded %d and %d", frame, ra.SiftedBits, ra.TestBits, want.SiftedZ, want.SiftedX)
		}
		if ra.QBERX != want.QBERX() || rb.QBERX != want.QBERX() {
			t.Errorf("frame %d: QBER_X %v/%v, recorded %v", frame, ra.QBERX, rb.QBERX, want.QBERX())
		}
		if ra.QBERZ != want.QBERZ() || rb.QBERZ != want.QBERZ() {
			t.Errorf("frame %d: QBER_Z %v/%v, recorded %v", frame, ra.QBERZ, rb.QBERZ, want.QBERZ())
		}
		t.Logf("frame %d: %d pulses, %d detections, n_Z %d, QBER_Z %.4f, QBER_X %.4f, λ_EC %d, f %.3f, key %d bits, link %.2g s",
			frame, pulses, ra.Detections, ra.SiftedBits, ra.QBERZ, ra.QBERX, ra.LeakEC, ra.ReconEfficiency(), ra.FinalBits, ra.LinkTime)
	}
	if _, _, err := tx.Next(ctx); !errors.Is(err, ErrEndOfStream) {
		t.Fatalf("after the recorded frames: %v, want ErrEndOfStream", err)
	}
}

// TestSessionCorruptStream: a session on a damaged recording aborts with the
// decoding error and leaves no key on either side; the frame before the
// damage still gives its key.
func TestSessionCorruptStream(t *testing.T) {
	ctx := context.Background()
	meta := loadRecording(t)
	ta, tb := readTestdata(t)
	probs := meta.Model.IntensityProbs
	last := meta.Truth[len(meta.Truth)-1]
	flip := func(b []byte, back int) []byte {
		c := append([]byte(nil), b...)
		c[len(c)-back] ^= 0x04
		return c
	}
	tests := []struct {
		name       string
		alice, bob []byte
		frame      uint64 // frame the session asks for
		// the decoding error of the party whose stream is bad; the other
		// party aborts too (peer aborted, or link down when the channel
		// closes first): nil means any ErrAbort
		wantA, wantB error
	}{
		{"bit flip in Alice's last frame", flip(ta, 1000), tb, last.Frame, ErrCRC, nil},
		{"bit flip in Bob's last frame", ta, flip(tb, 1000), last.Frame, nil, ErrCRC},
		{"Alice's stream cut short", ta[:len(ta)-5000], tb, last.Frame, ErrTruncated, nil},
		{"Bob's stream cut short", ta, tb[:len(tb)-2], last.Frame, nil, ErrTruncated},
		{"session asks for an unrecorded frame", ta, tb, last.Frame + 7, ErrFrameMismatch, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := NewTransmitter(ctx, bytes.NewReader(tc.alice), Options{})
			if err != nil {
				t.Fatal(err)
			}
			rx, err := NewReceiver(ctx, bytes.NewReader(tc.bob), Options{Rand: partyRand("squash", 0)})
			if err != nil {
				t.Fatal(err)
			}
			// the intact frames before the damaged one still work
			for _, tr := range meta.Truth[:len(meta.Truth)-1] {
				ra, rb, errA, errB := runSession(t, tx, rx, tr.Frame, tr.Pulses, probs)
				if errA != nil || errB != nil || ra.FinalBits == 0 || !bytes.Equal(ra.Key, rb.Key) {
					t.Fatalf("intact frame %d: %v, %v", tr.Frame, errA, errB)
				}
			}
			ra, rb, errA, errB := runSession(t, tx, rx, tc.frame, last.Pulses, probs)
			t.Logf("Alice: %v", errA)
			t.Logf("Bob:   %v", errB)
			if tc.wantA == nil {
				tc.wantA = session.ErrAbort
			}
			if tc.wantB == nil {
				tc.wantB = session.ErrAbort
			}
			if !errors.Is(errA, session.ErrAbort) || !errors.Is(errA, tc.wantA) {
				t.Errorf("Alice: %v, want abort with %v", errA, tc.wantA)
			}
			if !errors.Is(errB, session.ErrAbort) || !errors.Is(errB, tc.wantB) {
				t.Errorf("Bob: %v, want abort with %v", errB, tc.wantB)
			}
			if len(ra.Key) != 0 || len(rb.Key) != 0 || ra.FinalBits != 0 || rb.FinalBits != 0 {
				t.Errorf("a key survived: %d and %d bits", ra.FinalBits, rb.FinalBits)
			}
		})
	}
}

// BenchmarkDecode measures decoding of the recorded streams.
func BenchmarkDecode(b *testing.B) {
	a, err := os.ReadFile(filepath.Join("testdata", "alice.qkds"))
	if err != nil {
		b.Skip(err)
	}
	bb, err := os.ReadFile(filepath.Join("testdata", "bob.qkds"))
	if err != nil {
		b.Skip(err)
	}
	var pulses uint64
	b.SetBytes(int64(len(a) + len(bb)))
	for b.Loop() {
		pulses = 0
		truth, err := Compare(bytes.NewReader(a), bytes.NewReader(bb))
		if err != nil {
			b.Fatal(err)
		}
		for _, tr := range truth {
			pulses += tr.Pulses
		}
	}
	b.ReportMetric(float64(pulses)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpulses/s")
}

// TestSessionDoubleClicks marks every 200th recorded detection as a double
// click: the receiver squashes them to random bits, the session still ends
// with equal keys, and the squashed bits add errors at about half the
// double-click rate.
func TestSessionDoubleClicks(t *testing.T) {
	ctx := context.Background()
	meta := loadRecording(t)
	ta, tb := readTestdata(t)
	d, err := NewDecoder(bytes.NewReader(tb))
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.ReadBob()
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.Clicks {
		if i%200 == 0 {
			f.Clicks[i].Double, f.Clicks[i].Bit = true, 0
		}
	}
	bob := encodeBob(t, d.Header(), []*BobFrame{f})
	truth, err := Compare(bytes.NewReader(ta), bytes.NewReader(bob))
	if err == nil || !errors.Is(err, ErrEndOfStream) || len(truth) != 1 {
		t.Fatalf("Compare: %v, %d frames (the Bob stream has only frame 1)", err, len(truth))
	}
	tr := truth[0]
	tx, err := NewTransmitter(ctx, bytes.NewReader(ta), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rx, err := NewReceiver(ctx, bytes.NewReader(bob), Options{Rand: partyRand("squash", 1)})
	if err != nil {
		t.Fatal(err)
	}
	ra, rb, errA, errB := runSession(t, tx, rx, f.Frame, f.Pulses, meta.Model.IntensityProbs)
	if errA != nil || errB != nil || ra.FinalBits == 0 || !bytes.Equal(ra.Key, rb.Key) {
		t.Fatalf("Alice %v, Bob %v, keys %d/%d bits", errA, errB, ra.FinalBits, rb.FinalBits)
	}
	// single clicks: tr's errors; double clicks in matching Z bases: half wrong
	extra := float64(ra.SiftedBits) - float64(tr.SiftedZ)
	want := (float64(tr.ErrorsZ) + extra/2) / float64(ra.SiftedBits)
	t.Logf("%d double clicks; n_Z %d (%.0f squashed); QBER_Z %.4f (single clicks %.4f, expected ≈ %.4f); key %d bits",
		tr.Doubles, ra.SiftedBits, extra, ra.QBERZ, tr.QBERZ(), want, ra.FinalBits)
	if extra < 100 || ra.QBERZ < want*0.85 || ra.QBERZ > want*1.15 {
		t.Fatalf("QBER_Z %.4f, want ≈ %.4f", ra.QBERZ, want)
	}
}
