package devstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/quantum"
	"qkdkms/quantum/session"
)

// openLink builds a "devstream" driver through the registry, as a node
// does from its links[] configuration.
func openLink(t testing.TB, options string) *Driver {
	t.Helper()
	d, err := quantum.Open("devstream", json.RawMessage(options))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d.(*Driver)
}

func TestLinkOptions(t *testing.T) {
	tests := []struct {
		name    string
		options string
		want    LinkOptions // with defaults; zero when an error is wanted
		err     string
	}{
		{"file with defaults", `{"source":"file:/x/alice.qkds"}`, LinkOptions{Source: "file:/x/alice.qkds", StallTimeout: quantum.Duration(DefaultStallTimeout), MaxLagFrames: DefaultMaxLagFrames}, ""},
		{"looped file", `{"source":"file:a.qkds","loop":true,"stall_timeout":"250ms","max_lag_frames":4}`, LinkOptions{Source: "file:a.qkds", Loop: true, StallTimeout: quantum.Duration(250 * time.Millisecond), MaxLagFrames: 4}, ""},
		{"tcp", `{"source":"tcp:qkd-alice.lab:7001","stall_timeout":"5s"}`, LinkOptions{Source: "tcp:qkd-alice.lab:7001", StallTimeout: quantum.Duration(5 * time.Second), MaxLagFrames: DefaultMaxLagFrames}, ""},
		{"unix", `{"source":"unix:/run/qkd/bob.sock"}`, LinkOptions{Source: "unix:/run/qkd/bob.sock", StallTimeout: quantum.Duration(DefaultStallTimeout), MaxLagFrames: DefaultMaxLagFrames}, ""},
		{"no options", ``, LinkOptions{}, "source is required"},
		{"no source", `{"loop":true}`, LinkOptions{}, "source is required"},
		{"unknown scheme", `{"source":"http://x"}`, LinkOptions{}, "unknown scheme"},
		{"tcp without port", `{"source":"tcp:host"}`, LinkOptions{}, "tcp:HOST:PORT"},
		{"loop on a socket", `{"source":"tcp:h:1","loop":true}`, LinkOptions{}, "loop is for file sources"},
		{"negative stall", `{"source":"file:a","stall_timeout":"-1s"}`, LinkOptions{}, "must be positive"},
		{"stall not a string", `{"source":"file:a","stall_timeout":5}`, LinkOptions{}, "duration must be a string"},
		{"negative lag", `{"source":"file:a","max_lag_frames":-2}`, LinkOptions{}, "must be positive"},
		{"unknown option", `{"source":"file:a","rate":3}`, LinkOptions{}, "unknown field"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := quantum.Open("devstream", json.RawMessage(tc.options))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.(*Driver).Options(); got != tc.want {
				t.Fatalf("options %+v, want %+v", got, tc.want)
			}
			// the factory opened nothing: the file need not exist
			if h := d.Health(); !h.OK || h.Details["connected"] != false {
				t.Fatalf("health before Source/Sink: %+v", h)
			}
		})
	}
}

// startEmulator runs Serve on two Unix sockets and returns the driver
// options of Alice's and Bob's site.
func startEmulator(t *testing.T, o ServeOptions) (alice, bob string, st *ServeStats) {
	t.Helper()
	dir := t.TempDir()
	la, err := Listen("unix:" + filepath.Join(dir, "alice.sock"))
	if err != nil {
		t.Fatal(err)
	}
	lb, err := Listen("unix:" + filepath.Join(dir, "bob.sock"))
	if err != nil {
		t.Fatal(err)
	}
	o.Alice, o.Bob = la, lb
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st = new(ServeStats)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, o, st) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	opt := func(l net.Listener) string {
		return fmt.Sprintf(`{"source":"unix:%s","stall_timeout":"%v"}`, l.Addr(), testenv.Scaled(10*time.Second))
	}
	return opt(la), opt(lb), st
}

func frameCount(d *Driver) uint64 { return d.Health().Details["frames_read"].(uint64) }

// TestLinkLiveSessions: the emulator streams the simulator live; Alice's
// site opens its Source, Bob's its Sink, and BB84 sessions on the frames
// Alice's Next chooses give both parties the same key.
func TestLinkLiveSessions(t *testing.T) {
	ctx := context.Background()
	o := testdataOptions()
	m := o.Model
	m.PulseRate = 5e6 // a frame every 100 ms: the simulator keeps pace
	aliceOpt, bobOpt, st := startEmulator(t, ServeOptions{Model: m, Seed: 3, Pulses: o.Pulses})
	da, db := openLink(t, aliceOpt), openLink(t, bobOpt)
	src, err := da.Source(ctx, quantum.LinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sink, err := db.Sink(ctx, quantum.LinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	// both streams run: Bob's holds every frame from its first on
	testenv.WaitFor(t, "two frames on both streams", func() bool { return frameCount(da) >= 2 && frameCount(db) >= 2 })
	var last uint64
	for i := range 2 {
		frame, pulses, err := src.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pulses != o.Pulses || frame <= last {
			t.Fatalf("session %d: Next = frame %d of %d pulses after frame %d", i, frame, pulses, last)
		}
		ra, rb, errA, errB := runSession(t, src, sink, frame, pulses, src.IntensityProbs())
		src.Release(frame)
		if errA != nil || errB != nil {
			t.Fatalf("frame %d: Alice %v, Bob %v", frame, errA, errB)
		}
		if ra.FinalBits == 0 || !bytes.Equal(ra.Key, rb.Key) {
			t.Fatalf("frame %d: keys differ or empty (%d and %d bits)", frame, ra.FinalBits, rb.FinalBits)
		}
		t.Logf("frame %d: %d detections, QBER_Z %.4f, key %d bits", frame, ra.Detections, ra.QBERZ, ra.FinalBits)
		last = frame
	}
	for _, d := range []*Driver{da, db} {
		h := d.Health()
		t.Logf("health: %+v", h)
		if !h.OK || h.Driver != "devstream" || h.Details["position"] != last || h.Details["connected"] != true || h.Details["frames_delivered"].(uint64) != 2 {
			t.Errorf("health %+v, want ok at frame %d with 2 frames delivered", h, last)
		}
	}
	if da.Health().Details["role"] != "alice" || db.Health().Details["role"] != "bob" {
		t.Errorf("roles: %v, %v", da.Health().Details["role"], db.Health().Details["role"])
	}
	if st.Frames.Load() < 2 {
		t.Errorf("emulator stats: %d frames", st.Frames.Load())
	}
}

// TestLinkFileLoop: a looped recording keeps its frame numbers increasing
// (frame 1 and 2 of the file come back as 3 and 4); Bob skips the frames
// Alice did not run a session on; the session on a looped frame gives a
// key.
func TestLinkFileLoop(t *testing.T) {
	ctx := context.Background()
	meta := loadRecording(t)
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	da := openLink(t, fmt.Sprintf(`{"source":"file:%s","loop":true}`, abs(aliceFile)))
	db := openLink(t, fmt.Sprintf(`{"source":"file:%s","loop":true,"max_lag_frames":2}`, abs(bobFile)))
	src, err := da.Source(ctx, quantum.LinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sink, err := db.Sink(ctx, quantum.LinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	pulses := meta.Pulses
	// frames 1..4 on Alice's side: a file is never skipped
	for want := uint64(1); want <= 4; want++ {
		frame, n, err := src.Next(ctx)
		if err != nil || frame != want || n != pulses {
			t.Fatalf("Next = %d, %d, %v; want frame %d of %d", frame, n, err, want, pulses)
		}
		if want == 4 {
			break
		}
		if _, err := src.Send(ctx, frame, n); err != nil {
			t.Fatal(err)
		}
		src.Release(frame)
	}
	// frame 4 is the file's frame 2 again, second pass
	ra, rb, errA, errB := runSession(t, src, sink, 4, pulses, src.IntensityProbs())
	if errA != nil || errB != nil || ra.FinalBits == 0 || !bytes.Equal(ra.Key, rb.Key) {
		t.Fatalf("looped frame 4: Alice %v, Bob %v, %d/%d bits", errA, errB, ra.FinalBits, rb.FinalBits)
	}
	if want := meta.Truth[1]; ra.Detections != want.Detections || uint64(ra.SiftedBits) != want.SiftedZ {
		t.Errorf("frame 4: %d detections n_Z %d; the file's frame 2 has %d and %d", ra.Detections, ra.SiftedBits, want.Detections, want.SiftedZ)
	}
	hb := db.Health()
	if hb.Details["frames_skipped"] != uint64(3) || hb.Details["position"] != uint64(4) || hb.Details["loops"].(uint64) < 1 {
		t.Errorf("Bob's health %+v: want 3 frames skipped, position 4, a loop", hb)
	}
	// a file that is not looped ends
	dn := openLink(t, fmt.Sprintf(`{"source":"file:%s"}`, abs(bobFile)))
	sn, err := dn.Sink(ctx, quantum.LinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if _, err := sn.Receive(ctx, 3, pulses); !errors.Is(err, ErrEndOfStream) || !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("frame 3 of a 2-frame file: %v, want ErrEndOfStream", err)
	}
}

// serveBytes serves data to every client of a Unix socket and then keeps
// the connection open (a device that stops sending). It returns the
// source option.
func serveBytes(t *testing.T, data []byte) string {
	t.Helper()
	l, err := Listen("unix:" + filepath.Join(t.TempDir(), "dev.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = c.Write(data)
				<-done
			}()
		}
	}()
	return "unix:" + l.Addr().String()
}

// TestLinkStreamErrors: each stream fault aborts the session it hits with
// a *StreamError wrapping its typed cause, leaves no key on either side,
// and shows in the driver's Health.
func TestLinkStreamErrors(t *testing.T) {
	ctx := context.Background()
	const pulses = 4000
	as, bs := randomFrames(7, 4, pulses, true)
	for i := range as {
		as[i].Frame, bs[i].Frame = uint64(i+1), uint64(i+1)
	}
	ha, hb := testHeader(RoleAlice), testHeader(RoleBob)
	renumber := func(fs []*BobFrame, frames ...uint64) []*BobFrame {
		var out []*BobFrame
		for i, n := range frames {
			f := *fs[i]
			f.Frame = n
			out = append(out, &f)
		}
		return out
	}
	good := encodeBob(t, hb, bs[:2])
	// frame 2, then frame 1 (a Writer refuses to write this)
	hdr := len(appendHeader(nil, hb))
	disorder := append(encodeBob(t, hb, renumber(bs, 2)), encodeBob(t, hb, bs[:1])[hdr:]...)
	crc := append([]byte(nil), good...)
	crc[len(crc)-40] ^= 0x10 // in frame 2's body
	stall := fmt.Sprintf(`,"stall_timeout":"%v"`, 300*time.Millisecond)
	tests := []struct {
		name    string
		alice   []byte // Alice's stream (a file)
		bob     []byte // Bob's stream (a socket that stays open)
		bobOpt  string
		frame   uint64 // the frame the session runs
		wantErr error  // Bob's cause
		aliceIt bool   // the fault is on Alice's stream: her Next fails
	}{
		{"gap", encodeAlice(t, ha, as[1:2]), encodeBob(t, hb, renumber(bs, 1, 3)), "", 2, ErrGap, false},
		{"crc", encodeAlice(t, ha, as[1:2]), crc, "", 2, ErrCRC, false},
		{"out of order", encodeAlice(t, ha, as[2:3]), disorder, "", 3, ErrFrameOrder, false},
		{"stall", encodeAlice(t, ha, as[2:3]), good, stall, 3, ErrStall, false},
		{"alice stalls", encodeAlice(t, ha, nil), good, stall, 1, ErrStall, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "alice.qkds")
			if err := os.WriteFile(file, tc.alice, 0o600); err != nil {
				t.Fatal(err)
			}
			aopt := fmt.Sprintf(`{"source":"file:%s"}`, file)
			if tc.aliceIt {
				aopt = fmt.Sprintf(`{"source":"%s"%s}`, serveBytes(t, tc.alice), stall)
			}
			da := openLink(t, aopt)
			db := openLink(t, fmt.Sprintf(`{"source":"%s"%s}`, serveBytes(t, tc.bob), tc.bobOpt))
			src, err := da.Source(ctx, quantum.LinkEnv{})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			sink, err := db.Sink(ctx, quantum.LinkEnv{})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			faulty := db
			if tc.aliceIt {
				faulty = da
				_, _, err := src.Next(ctx)
				checkStreamErr(t, err, tc.wantErr, RoleAlice)
			} else {
				frame, _, err := src.Next(ctx)
				if err != nil || frame != tc.frame {
					t.Fatalf("Next = %d, %v; want %d", frame, err, tc.frame)
				}
				ra, rb, errA, errB := runSession(t, src, sink, tc.frame, pulses, src.IntensityProbs())
				t.Logf("Alice: %v", errA)
				t.Logf("Bob:   %v", errB)
				if !errors.Is(errA, session.ErrAbort) || !errors.Is(errB, session.ErrAbort) {
					t.Errorf("Alice %v, Bob %v: want both aborted", errA, errB)
				}
				if len(ra.Key) != 0 || len(rb.Key) != 0 {
					t.Errorf("a key survived: %d and %d bytes", len(ra.Key), len(rb.Key))
				}
				checkStreamErr(t, errB, tc.wantErr, RoleBob)
			}
			h := faulty.Health()
			t.Logf("health: %+v", h)
			if h.OK || !strings.Contains(h.LastError, tc.wantErr.Error()) || h.Details["stream_errors"].(uint64) == 0 {
				t.Errorf("health %+v: want not OK with the error %q", h, tc.wantErr)
			}
		})
	}
}

func checkStreamErr(t *testing.T, err, want error, role Role) {
	t.Helper()
	var se *StreamError
	if !errors.Is(err, want) || !errors.As(err, &se) || se.Role != role {
		t.Fatalf("%v: want a %s *StreamError wrapping %v", err, role, want)
	}
}

// TestLinkWrongRole: a site opened on the other party's stream fails at
// once, saying which stream it needs, and reports it in Health.
func TestLinkWrongRole(t *testing.T) {
	ctx := context.Background()
	as, bs := randomFrames(8, 1, 100, false)
	tests := []struct {
		name   string
		stream []byte
		open   func(d *Driver) error
		want   string
	}{
		{"Alice's site on a Bob stream", encodeBob(t, testHeader(RoleBob), bs), func(d *Driver) error {
			_, err := d.Source(ctx, quantum.LinkEnv{})
			return err
		}, "Alice's site (the site whose KME ID sorts first) needs an alice stream"},
		{"Bob's site on an Alice stream", encodeAlice(t, testHeader(RoleAlice), as), func(d *Driver) error {
			_, err := d.Sink(ctx, quantum.LinkEnv{})
			return err
		}, "needs a bob stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := openLink(t, fmt.Sprintf(`{"source":"%s"}`, serveBytes(t, tc.stream)))
			err := tc.open(d)
			var se *StreamError
			if !errors.Is(err, ErrRole) || !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: want ErrRole saying %q", err, tc.want)
			}
			if h := d.Health(); h.OK || !strings.Contains(h.LastError, tc.want) {
				t.Fatalf("health %+v", h)
			}
		})
	}
}
