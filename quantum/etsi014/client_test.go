package etsi014

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/quantum"
)

// TestDrawFetch: keys drawn at one device are fetched with the same bytes
// at the other, in as few calls as max_keys_per_request allows, in both
// directions, and each key only once.
func TestDrawFetch(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{MaxKeysPerRequest: 8})
	ctx := context.Background()
	cases := []struct {
		n, perRequest, keys, calls int
	}{
		{n: 32, perRequest: 1, keys: 1, calls: 1},
		{n: 64, perRequest: 1, keys: 2, calls: 2},
		{n: 128, perRequest: 8, keys: 4, calls: 1},
		{n: 32 * 8, perRequest: 8, keys: 8, calls: 1},
		{n: 32 * 9, perRequest: 8, keys: 9, calls: 2},
		{n: 1024, perRequest: 3, keys: 32, calls: 11},
	}
	for _, dir := range []struct {
		name     string
		from, to *Device
	}{{"a to b", e.A, e.B}, {"b to a", e.B, e.A}} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/n=%d/per=%d", dir.name, tc.n, tc.perRequest), func(t *testing.T) {
				per := func(o *Options) { o.MaxKeysPerRequest = tc.perRequest }
				master := newClient(t, dir.from, discardLog(), per)
				slave := newClient(t, dir.to, discardLog(), per)
				served := dir.from.Served()
				ids, key, err := master.Draw(ctx, tc.n)
				if err != nil {
					t.Fatalf("Draw: %v", err)
				}
				if len(ids) != tc.keys || len(key) != tc.n {
					t.Fatalf("Draw(%d): %d IDs, %d bytes; want %d keys of 32 bytes", tc.n, len(ids), len(key), tc.keys)
				}
				if got := dir.from.Served() - served; got != tc.calls {
					t.Errorf("Draw made %d enc_keys calls, want %d", got, tc.calls)
				}
				if bytes.Equal(key, make([]byte, len(key))) {
					t.Fatal("Draw returned zero bytes")
				}
				served = dir.to.Served()
				got, err := slave.Fetch(ctx, ids)
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				if !bytes.Equal(got, key) {
					t.Fatal("Fetch returned other bytes than Draw")
				}
				if n := dir.to.Served() - served; n != tc.calls {
					t.Errorf("Fetch made %d dec_keys calls, want %d", n, tc.calls)
				}
				_, err = slave.Fetch(ctx, ids)
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("second Fetch: %v, want ErrRefused (each key is handed once)", err)
				}
				h := master.Health()
				if h.Driver != "etsi014" || h.Details["keys_drawn"] != uint64(tc.keys) || h.Details["reachable"] != true ||
					h.Details["last_success"] == nil {
					t.Errorf("master Health = %+v", h)
				}
				if h := slave.Health(); h.Details["keys_fetched"] != uint64(tc.keys) || h.OK || h.LastError == "" {
					t.Errorf("slave Health after the refused second Fetch = %+v", h)
				}
			})
		}
	}
	if n := e.Pending(); n != 0 {
		t.Errorf("%d keys left pending", n)
	}
}

// TestFetchOrder: Fetch returns the bytes in the order of the IDs it is
// given, whatever the order of the draws.
func TestFetchOrder(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	ctx := context.Background()
	master := newClient(t, e.A, discardLog(), func(o *Options) { o.MaxKeysPerRequest = 4 })
	slave := newClient(t, e.B, discardLog(), func(o *Options) { o.MaxKeysPerRequest = 4 })
	ids, key, err := master.Draw(ctx, 6*32)
	if err != nil {
		t.Fatal(err)
	}
	perm := []int{5, 0, 3, 1, 4, 2}
	var rids []string
	var want []byte
	for _, i := range perm {
		rids = append(rids, ids[i])
		want = append(want, key[i*32:(i+1)*32]...)
	}
	got, err := slave.Fetch(ctx, rids)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("Fetch did not return the keys in the order of its IDs")
	}
}

func TestInvalidArguments(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	c := newClient(t, e.A, discardLog(), nil)
	ctx := context.Background()
	id := "0b0f3c77-6d2e-4f0a-b7a3-2b1d6f7c9e20"
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"draw 0", func() error { _, _, err := c.Draw(ctx, 0); return err }},
		{"draw negative", func() error { _, _, err := c.Draw(ctx, -1); return err }},
		{"draw too much", func() error { _, _, err := c.Draw(ctx, maxDrawBytes+32); return err }},
		{"draw a part of a key", func() error { _, _, err := c.Draw(ctx, 1); return err }},
		{"draw not whole keys", func() error { _, _, err := c.Draw(ctx, 33); return err }},
		{"fetch none", func() error { _, err := c.Fetch(ctx, nil); return err }},
		{"fetch non-UUID", func() error { _, err := c.Fetch(ctx, []string{"key-1"}); return err }},
		{"fetch twice the same", func() error { _, err := c.Fetch(ctx, []string{id, strings.ToUpper(id)}); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrDevice) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
	if n := e.A.Served(); n != 0 {
		t.Errorf("invalid arguments reached the device (%d calls)", n)
	}
}

// TestFaults: each device fault gives the typed error, shows in Health,
// and leaves the driver working once the device recovers.
func TestFaults(t *testing.T) {
	cases := []struct {
		name   string
		at     string // "a": fault on the drawing device, "b": on the fetching one
		fault  Fault
		kind   error
		status int
		msg    string // in the error
	}{
		{name: "enc_keys timeout", at: "a", fault: Fault{Kind: FaultDelay, Delay: time.Hour}, kind: ErrTimeout, msg: "timed out"},
		{name: "dec_keys timeout", at: "b", fault: Fault{Kind: FaultDelay, Delay: time.Hour}, kind: ErrTimeout, msg: "timed out"},
		{name: "enc_keys connection reset", at: "a", fault: Fault{Kind: FaultDrop}, kind: ErrDisconnected, msg: "disconnected"},
		{name: "dec_keys connection reset", at: "b", fault: Fault{Kind: FaultDrop}, kind: ErrDisconnected, msg: "disconnected"},
		{name: "enc_keys 503", at: "a", fault: Fault{Kind: FaultUnavailable}, kind: ErrRefused, status: 503, msg: "service unavailable"},
		{name: "dec_keys 503", at: "b", fault: Fault{Kind: FaultUnavailable}, kind: ErrRefused, status: 503, msg: "service unavailable"},
		{name: "enc_keys malformed JSON", at: "a", fault: Fault{Kind: FaultMalformed}, kind: ErrMalformed, msg: "JSON"},
		{name: "dec_keys malformed JSON", at: "b", fault: Fault{Kind: FaultMalformed}, kind: ErrMalformed, msg: "JSON"},
		{name: "enc_keys short keys", at: "a", fault: Fault{Kind: FaultShortKeys}, kind: ErrMalformed, msg: "248 bits, want key_size 256"},
		{name: "dec_keys short keys", at: "b", fault: Fault{Kind: FaultShortKeys}, kind: ErrMalformed, msg: "248 bits, want key_size 256"},
		{name: "dec_keys wrong IDs", at: "b", fault: Fault{Kind: FaultWrongIDs}, kind: ErrMalformed, msg: "not in the answer"},
		// A wrong ID from enc_keys is a valid UUID the drawing site cannot
		// tell from a right one: the peer's device does not know it.
		{name: "enc_keys wrong IDs", at: "a", fault: Fault{Kind: FaultWrongIDs}, kind: ErrRefused, status: 400,
			msg: "one or more keys specified are not found on KME"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEmulator(t, EmulatorConfig{})
			short := func(o *Options) {
				o.Timeout = quantum.Duration(testenv.Scaled(300 * time.Millisecond))
				o.MaxKeysPerRequest = 4
			}
			master := newClient(t, e.A, discardLog(), short)
			slave := newClient(t, e.B, discardLog(), short)
			ctx := context.Background()
			failing := master
			dev := e.A
			if tc.at == "b" {
				dev = e.B
			}
			if tc.at == "b" || tc.kind == ErrRefused && tc.status == 400 {
				failing = slave
			}
			dev.SetFault(tc.fault)
			ids, key, err := master.Draw(ctx, 4*32)
			if failing == slave {
				if err != nil {
					t.Fatalf("Draw: %v", err)
				}
				_, err = slave.Fetch(ctx, ids)
			}
			var de *DeviceError
			if !errors.Is(err, ErrDevice) || !errors.Is(err, tc.kind) || !errors.As(err, &de) {
				t.Fatalf("err = %v, want a *DeviceError of kind %v", err, tc.kind)
			}
			if de.Status != tc.status || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v (status %d), want status %d and %q", err, de.Status, tc.status, tc.msg)
			}
			if failing == master && (ids != nil || key != nil) {
				t.Errorf("failed Draw returned %d IDs and %d bytes", len(ids), len(key))
			}
			h := failing.Health()
			if h.OK || h.LastError != err.Error() || h.Details["failed_calls"] != uint64(1) || h.Details["last_error_at"] == nil {
				t.Errorf("Health after the fault = %+v", h)
			}
			wantReach := tc.kind == ErrRefused || tc.kind == ErrMalformed
			if h.Details["reachable"] != wantReach {
				t.Errorf("Health reachable = %v, want %v", h.Details["reachable"], wantReach)
			}

			// The device recovers: the same drivers work again.
			dev.SetFault(Fault{})
			ids, key, err = master.Draw(ctx, 32)
			if err != nil {
				t.Fatalf("Draw after recovery: %v", err)
			}
			got, err := slave.Fetch(ctx, ids)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("Fetch after recovery: %v (equal %v)", err, bytes.Equal(got, key))
			}
			if h := failing.Health(); !h.OK || h.Details["reachable"] != true {
				t.Errorf("Health after recovery = %+v", h)
			}
		})
	}
}

// TestCorruptBytes: a device that hands out other bytes than its peer
// answers valid ETSI; the bytes differ and the link's hash comparison is
// what catches it.
func TestCorruptBytes(t *testing.T) {
	for _, at := range []string{"a", "b"} {
		t.Run(at, func(t *testing.T) {
			e := newEmulator(t, EmulatorConfig{})
			master := newClient(t, e.A, discardLog(), nil)
			slave := newClient(t, e.B, discardLog(), nil)
			map[string]*Device{"a": e.A, "b": e.B}[at].SetFault(Fault{Kind: FaultCorrupt})
			ctx := context.Background()
			ids, key, err := master.Draw(ctx, 64)
			if err != nil {
				t.Fatal(err)
			}
			got, err := slave.Fetch(ctx, ids)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got, key) || len(got) != len(key) {
				t.Fatal("a corrupting device gave equal bytes at both ends")
			}
		})
	}
}

// TestFaultCalls: a fault limited to a number of calls clears itself.
func TestFaultCalls(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	c := newClient(t, e.A, discardLog(), nil)
	e.A.SetFault(Fault{Kind: FaultUnavailable, Calls: 2})
	ctx := context.Background()
	for i, want := range []error{ErrRefused, ErrRefused, nil} {
		if _, _, err := c.Draw(ctx, 32); !errors.Is(err, want) {
			t.Fatalf("Draw %d: %v, want %v", i, err, want)
		}
	}
}

// TestUnreachable: no device at the address, a device whose certificate
// the site's CA did not issue, and a site certificate the device's CA did
// not issue.
func TestUnreachable(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	_ = ln.Close()
	other := e.B.Options()
	for _, tc := range []struct {
		name string
		edit func(*Options)
	}{
		{"nothing listening", func(o *Options) { o.URL = closed }},
		{"device certificate from another CA", func(o *Options) { o.CAFile = other.CAFile }},
		{"site certificate from another CA", func(o *Options) { o.CertFile, o.KeyFile = other.CertFile, other.KeyFile }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, e.A, discardLog(), tc.edit)
			_, _, err := c.Draw(context.Background(), 32)
			if !errors.Is(err, ErrDevice) || !errors.Is(err, ErrUnreachable) {
				t.Fatalf("err = %v, want ErrUnreachable", err)
			}
			if h := c.Health(); h.OK || h.Details["reachable"] != false {
				t.Errorf("Health = %+v", h)
			}
		})
	}
	if n := e.Pending(); n != 0 {
		t.Errorf("%d keys given out to unauthenticated callers", n)
	}
}

// TestCallerContext: the caller's cancellation ends the call and is not
// the device's fault; its deadline is a device timeout.
func TestCallerContext(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	c := newClient(t, e.A, discardLog(), nil)
	e.A.SetFault(Fault{Kind: FaultDelay, Delay: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	served := e.A.Served()
	errc := make(chan error, 1)
	go func() { _, _, err := c.Draw(ctx, 32); errc <- err }()
	testenv.WaitFor(t, "the device to hold the call", func() bool { return e.A.Served() > served })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || errors.Is(err, ErrDevice) {
		t.Fatalf("cancelled Draw: %v, want context.Canceled and no device error", err)
	}
	if h := c.Health(); !h.OK || h.LastError != "" {
		t.Errorf("a cancelled call shows in Health: %+v", h)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), testenv.Scaled(200*time.Millisecond))
	defer dcancel()
	if _, _, err := c.Draw(dctx, 32); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Draw past the caller's deadline: %v, want ErrTimeout", err)
	}
}

// TestClose: Close ends a call in flight and refuses later ones.
func TestClose(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	c := newClient(t, e.A, discardLog(), nil)
	e.A.SetFault(Fault{Kind: FaultDelay, Delay: time.Hour})
	served := e.A.Served()
	errc := make(chan error, 1)
	go func() { _, _, err := c.Draw(context.Background(), 32); errc <- err }()
	testenv.WaitFor(t, "the device to hold the call", func() bool { return e.A.Served() > served })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Draw in flight at Close: %v, want ErrClosed", err)
	}
	if _, err := c.Fetch(context.Background(), []string{"0b0f3c77-6d2e-4f0a-b7a3-2b1d6f7c9e20"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Fetch after Close: %v, want ErrClosed", err)
	}
	if h := c.Health(); h.OK || h.Details["closed"] != true {
		t.Errorf("Health after Close = %+v", h)
	}
}

// TestDeviceRefusal: a refusal carries the device's ETSI error message
// (here a key size the device does not serve).
func TestDeviceRefusal(t *testing.T) {
	e := newEmulator(t, EmulatorConfig{})
	c := newClient(t, e.A, discardLog(), func(o *Options) { o.KeySize = 512 })
	_, _, err := c.Draw(context.Background(), 64)
	var de *DeviceError
	if !errors.As(err, &de) || !errors.Is(err, ErrRefused) || de.Status != 400 ||
		de.Message != "size shall be between min_key_size and max_key_size" {
		t.Fatalf("err = %v, want ErrRefused 400 with the device's message", err)
	}
	if e.Pending() != 0 {
		t.Error("a refused enc_keys gave keys out")
	}
}
