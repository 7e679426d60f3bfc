package link

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/sim"
)

// Fuzz targets of the link protocol (issue 13 item 10): what a peer site's
// leader sends over the qkdkms-link/1 connection. make fuzz runs them with
// an execution budget; quantum/sim FuzzTransitFrame covers the transit
// frames the quantum queue carries.

// frame is one wire message: kind byte, 4-byte big-endian length, payload.
func frame(kind byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// fuzzAllocLimit: inputs announcing a message longer than this are
// skipped, to keep each input cheap (the reader grows its buffer as data
// arrives, TestWireAllocatesAsDataArrives).
const fuzzAllocLimit = 1 << 20

// expectFrames is the reference framer: the payloads a wire must deliver
// for data, per kind in order, before it goes down. skip reports an
// announced length over fuzzAllocLimit (and at most maxMessage).
func expectFrames(data []byte) (byKind map[byte][][]byte, skip bool) {
	byKind = map[byte][][]byte{}
	for len(data) >= 5 {
		n := binary.BigEndian.Uint32(data[1:5])
		if n > maxMessage {
			return byKind, false
		}
		if n > fuzzAllocLimit {
			return nil, true
		}
		if uint64(len(data)-5) < uint64(n) {
			return byKind, false
		}
		switch data[0] {
		case kindClassical, kindQuantum, kindCommit:
			byKind[data[0]] = append(byKind[data[0]], data[5:5+n])
		default:
			return byKind, false
		}
		data = data[5+n:]
	}
	return byKind, false
}

// FuzzWire: arbitrary bytes from the peer, through a net.Pipe into
// newWire. The wire delivers exactly the complete, well-formed messages
// before the first bad one (unknown kind, length over maxMessage,
// truncation, end of stream), each on its kind's queue in order, then
// reports quantum.ErrLinkDown on both queues; it never panics. Transit
// frames that arrive are decoded as RecvFrame would.
func FuzzWire(f *testing.F) {
	tf := &sim.TransitFrame{Frame: 7, Pulses: 1000, Photons: []sim.Photon{{Index: 3, Bit: 1, Basis: 1, Photons: 1}, {Index: 999, Intensity: 2, Photons: 2}}}
	tb, err := tf.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	hello, _ := json.Marshal(msg{Type: "hello", From: "sender_app", To: "receiver_app"})
	start, _ := json.Marshal(msg{Type: "start", Master: "ghi", Slave: "jkl", Plugins: host.Selection{"sift": "sift-go"}, LastBlock: "b1", PadOffset: 64})
	f.Add(frame(kindClassical, hello))
	f.Add(cat(frame(kindClassical, hello), frame(kindClassical, start), frame(kindQuantum, tb), frame(kindClassical, []byte(`{"type":"fin"}`))))
	f.Add(cat(frame(kindQuantum, tb), frame(kindQuantum, tb), frame(kindQuantum, tb), frame(kindQuantum, tb), frame(kindQuantum, tb), frame(kindQuantum, tb)))
	f.Add(frame(kindClassical, nil))
	f.Add([]byte{kindClassical, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'Z', 0, 0, 0, 1, 0})
	f.Add(cat(frame(kindCommit, []byte(`{"type":"committed","block_id":"b1"}`)), frame(kindClassical, start), frame(kindCommit, nil)))
	f.Add(frame(kindClassical, hello)[:9])
	f.Fuzz(func(t *testing.T, data []byte) {
		want, skip := expectFrames(data)
		if skip {
			t.Skip("announces a message over fuzzAllocLimit")
		}
		ca, cb := net.Pipe()
		w := newWire(cb)
		defer w.Close()
		go func() {
			_, _ = ca.Write(data)
			_ = ca.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		queues := map[byte]chan []byte{kindClassical: w.classical, kindQuantum: w.quantum, kindCommit: w.commit}
		got := map[byte][][]byte{}
		errs := map[byte]error{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for kind, q := range queues {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					m, err := w.recv(ctx, q)
					mu.Lock()
					if err != nil {
						errs[kind] = err
						mu.Unlock()
						return
					}
					got[kind] = append(got[kind], m)
					mu.Unlock()
					if kind == kindQuantum {
						var fr sim.TransitFrame
						_ = fr.UnmarshalBinary(m)
					}
				}
			}()
		}
		wg.Wait()
		for kind := range queues {
			if !errors.Is(errs[kind], quantum.ErrLinkDown) {
				t.Fatalf("after the input, queue %q: %v; want ErrLinkDown", kind, errs[kind])
			}
			if !equalMessages(got[kind], want[kind]) {
				t.Fatalf("queue %q delivered %d messages, want %d", kind, len(got[kind]), len(want[kind]))
			}
		}
	})
}

func equalMessages(got, want [][]byte) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if string(got[i]) != string(want[i]) {
			return false
		}
	}
	return true
}

// chanReceiver is a classical channel that hands out one message.
type chanReceiver struct{ b []byte }

func (c *chanReceiver) Recv(context.Context) ([]byte, error) {
	if c.b == nil {
		return nil, errors.New("no more messages")
	}
	b := c.b
	c.b = nil
	return b, nil
}

type chanSender struct{ got []byte }

func (c *chanSender) Send(_ context.Context, b []byte) error { c.got = b; return nil }

// FuzzLinkMessage: a classical-channel message from the peer, received as
// recv does (every type the protocol waits for). It decodes or errors,
// never panics; a message that decodes is sent again by send and received
// as the same message (decode(encode(x)) == x).
func FuzzLinkMessage(f *testing.F) {
	for _, m := range []msg{
		{Type: "hello", From: "sender_app", To: "receiver_app"},
		{Type: "start", Master: "ghi", Slave: "jkl", Plugins: host.Selection{"sift": "sift-go", "reconcile": "cascade@1.0.0"}, LastBlock: "b2", PrevBlock: "b1", PadOffset: 1 << 20},
		{Type: "ready", Plugins: host.Selection{"amplify": "toeplitz"}, LastBlock: "b2", PadOffset: 64},
		{Type: "commit", BlockID: "0f8fad5b-d9cb-469f-a165-70867728950e", KeyBytes: 4096, Auth: 64},
		{Type: "committed", BlockID: "0f8fad5b-d9cb-469f-a165-70867728950e"},
		{Type: "refuse", Reason: "no such connection", Plugins: host.Selection{"sift": "sift-go"}},
		{Type: "not_leader"}, {Type: "ping"}, {Type: "pong"},
	} {
		b, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"type":"start","pad_offset":-1}`))
	f.Add([]byte(`{"type":"commit","key_bytes":1e400}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		var first msg
		for _, want := range []string{"hello", "ready", "commit", "committed", "fin", "pong"} {
			m, err := recv(ctx, &chanReceiver{b: data}, want)
			if want == "hello" {
				first = m
			}
			if err == nil && m.Type != want {
				t.Fatalf("recv(%q) accepted a %q message", want, m.Type)
			}
		}
		var m msg
		if json.Unmarshal(data, &m) != nil {
			return
		}
		if !reflect.DeepEqual(normal(first), normal(m)) {
			t.Fatalf("recv decoded %+v, json %+v", first, m)
		}
		s := &chanSender{}
		if err := send(ctx, s, m); err != nil {
			t.Fatalf("send a decoded message: %v", err)
		}
		again, err := recv(ctx, &chanReceiver{b: s.got}, m.Type)
		if err != nil && m.Type != "refuse" && m.Type != "not_leader" {
			t.Fatalf("recv(send(%+v)): %v", m, err)
		}
		if !reflect.DeepEqual(normal(again), normal(m)) {
			t.Fatalf("decode(encode(x)) = %+v, want %+v", again, m)
		}
	})
}

// normal makes an empty plugin selection nil (omitempty drops it).
func normal(m msg) msg {
	if len(m.Plugins) == 0 {
		m.Plugins = nil
	}
	return m
}
