package devstream

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"

	"qkdkms/quantum"
)

// BenchmarkDevstreamDecode decodes a live link: a device goroutine pushes
// Alice's and Bob's streams (the recorded testdata frames, renumbered)
// over loopback TCP as fast as the reader takes them, and Alice's Source
// and Bob's Sink decode every frame (header, varints, CRC-32, the Alice
// nibbles' intensity check, Bob's click list) and hand it to a session
// (Next, Send, Receive). pulses/s counts each frame's pulses once, both
// streams decoded; an op is 8 frames of 5·10^5 pulses. pulses/cpu-s
// divides by the process's CPU time instead of the wall clock, which on a
// shared machine says more about what one core does.
func BenchmarkDevstreamDecode(b *testing.B) {
	const perOp = 8
	ctx := context.Background()
	ta, tb := readTestdata(b)
	da, err := NewDecoder(bytes.NewReader(ta))
	if err != nil {
		b.Fatal(err)
	}
	fa, err := da.ReadAlice()
	if err != nil {
		b.Fatal(err)
	}
	db, err := NewDecoder(bytes.NewReader(tb))
	if err != nil {
		b.Fatal(err)
	}
	fb, err := db.ReadBob()
	if err != nil {
		b.Fatal(err)
	}
	bobBody, err := appendClicks(nil, fb)
	if err != nil {
		b.Fatal(err)
	}
	n := uint64(b.N * perOp)
	// what the devices send, encoded before the clock starts
	recA, recB := make([][]byte, n), make([][]byte, n)
	size := 0
	for k := range n {
		recA[k] = appendRecord(nil, KindAlice, k+1, fa.Pulses, fa.Packed)
		recB[k] = appendRecord(nil, KindBob, k+1, fb.Pulses, bobBody)
		size += len(recA[k]) + len(recB[k])
	}
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		return l
	}
	la, lb := listen(), listen()
	// the two devices measure the same frames at the same time: one
	// goroutine writes frame k to both streams, then frame k+1
	go func() {
		ca, err := la.Accept()
		if err != nil {
			return
		}
		defer ca.Close()
		if _, err := ca.Write(appendHeader(nil, da.Header())); err != nil {
			return
		}
		cb, err := lb.Accept()
		if err != nil {
			return
		}
		defer cb.Close()
		if _, err := cb.Write(appendHeader(nil, db.Header())); err != nil {
			return
		}
		for k := range n {
			if _, err := ca.Write(recA[k]); err != nil {
				return
			}
			if _, err := cb.Write(recB[k]); err != nil {
				return
			}
		}
		var one [1]byte
		_, _ = ca.Read(one[:]) // until the reader closes
	}()
	opts := func(l net.Listener) string { return fmt.Sprintf(`{"source":"tcp:%s","max_lag_frames":64}`, l.Addr()) }
	alice := openLink(b, opts(la))
	bob := openLink(b, opts(lb))
	b.SetBytes(int64(size / b.N))
	b.ResetTimer()
	cpu0 := cpuTime()
	src, err := alice.Source(ctx, quantum.LinkEnv{})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	sink, err := bob.Sink(ctx, quantum.LinkEnv{})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	for last := uint64(0); last < n; {
		frame, pulses, err := src.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := src.Send(ctx, frame, pulses); err != nil {
			b.Fatal(err)
		}
		src.Release(frame)
		dets, err := sink.Receive(ctx, frame, pulses)
		if err != nil {
			b.Fatal(err)
		}
		if len(dets) != len(fb.Clicks) {
			b.Fatalf("frame %d: %d detections, sent %d", frame, len(dets), len(fb.Clicks))
		}
		last = frame
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if got := frameCount(alice); got != n {
		b.Fatalf("Alice's stream decoded %d frames of %d", got, n)
	}
	b.ReportMetric(float64(n*fa.Pulses)/b.Elapsed().Seconds(), "pulses/s")
	if cpu > 0 {
		// the process's CPU time: the decoding, the sessions' calls and the
		// emulated devices' writes, whichever cores they ran on
		b.ReportMetric(float64(n*fa.Pulses)/cpu.Seconds(), "pulses/cpu-s")
	}
}
