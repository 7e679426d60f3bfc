// Package etsi014 is the "etsi014" link driver (a quantum.KeyDevice): a
// commercial QKD device that does its own post-processing and delivers
// finished keys over ETSI GS QKD 014, with this site acting as the SAE of
// its local device. The link session (node/link) uses it like this: the
// site that drives calls Draw (enc_keys at its device, naming the peer
// site's SAE as slave), sends the key IDs over the authenticated link
// channel, the peer site calls Fetch (dec_keys at its own device, naming
// the first site's SAE as master), both compare a hash of the key over
// the authenticated channel, and the block is committed slave site first.
// This package only talks to the local device; it never decides what is
// committed.
//
// # Options
//
// The driver's JSON options (`links[].options`, node/CONFIG.md), decoded
// strictly (an unknown member is an error):
//
//	{
//	  "url":                  "https://qkd-a.example:8443",  // required
//	  "sae_id":               "kms-site-a",                  // required
//	  "peer_sae_id":          "kms-site-b",                  // required
//	  "key_size":             256,                           // default 256
//	  "max_keys_per_request": 1,                             // default 1
//	  "ca_file":              "/etc/qkdkms/qkd-a/ca.crt",    // required
//	  "cert_file":            "/etc/qkdkms/qkd-a/sae.crt",   // required
//	  "key_file":             "/etc/qkdkms/qkd-a/sae.key",   // required, mode 0600
//	  "timeout":              "10s"                          // default 10s
//	}
//
// The members:
//
//   - url: the local device's ETSI 014 base URL; https only, no query,
//     fragment or user info. Calls go to {url}/api/v1/keys/{peer_sae_id}/enc_keys
//     and {url}/api/v1/keys/{peer_sae_id}/dec_keys (POST).
//   - sae_id: this site's SAE ID at its device (the identity cert_file
//     carries, as the device's operator registered it). Informational for
//     the driver (the device reads the identity from the certificate);
//     shown in Health.
//   - peer_sae_id: the peer site's SAE ID at the peer's device: the slave
//     of this site's enc_keys and the master of its dec_keys. Must differ
//     from sae_id.
//   - key_size: bits per key asked of the device (enc_keys "size"); a
//     multiple of 8, 8 … 65536. Both sites must use the same value. Draw
//     takes whole keys: n must be a multiple of key_size/8.
//   - max_keys_per_request: at most this many keys per enc_keys or
//     dec_keys call, 1 … 65536. Set it to the device's max_key_per_request
//     (its status answer) to draw in fewer calls; the default 1 works with
//     every device.
//   - ca_file: PEM bundle of the CA that issued the device's server
//     certificate (the device's own PKI, not the KMS's).
//   - cert_file, key_file: the client certificate and key this site
//     presents to its device as its SAE. key_file must not be readable by
//     group or others (mode 0600 or stricter).
//   - timeout: bound of each device call (connect, TLS handshake, answer),
//     a Go duration; more than 0, at most 10m.
//
// The factory validates the options and reads the three files; it makes
// no network call. A Health before the first call therefore says nothing
// about reachability.
//
// # Errors
//
// Every failure of the device is a *DeviceError matching ErrDevice and one
// of ErrTimeout, ErrDisconnected, ErrUnreachable, ErrRefused (a non-2xx
// answer, with the device's ETSI error message) or ErrMalformed (malformed
// JSON, a wrong number of keys, a wrong key size, an ID that is not a UUID,
// given twice, or not the one asked for). The driver never retries: a call
// whose answer was lost may have given keys out, which are then lost, never
// reused. Different bytes at the two ends are valid ETSI answers; only the
// link's hash comparison finds them.
//
// Neither errors nor log lines carry key bits; log lines carry the
// operation, the key count and (at debug level) the key IDs.
//
// # Emulator
//
// NewEmulator starts two emulated devices that share one key store, each
// serving ETSI 014 over HTTPS with its own CA and client-certificate
// authentication, with injectable faults (Fault): for tests and for the
// demo, so the whole key path runs without hardware.
package etsi014
