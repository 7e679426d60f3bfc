// Package etsi serves the ETSI GS QKD 014 V1.1.1 key delivery API
// (status, enc_keys, dec_keys under /api/v1/keys/) and the seed's
// compatibility API on top of a Backend. API.md in this folder is the
// reference for clients; the decisions on what the spec leaves open are
// listed there.
package etsi

import "encoding/json"

// Status is the ETSI 014 Status object. Every field is always present;
// sizes are in bits, counts in keys of KeySize.
type Status struct {
	SourceKMEID      string         `json:"source_KME_ID"`
	TargetKMEID      string         `json:"target_KME_ID"`
	MasterSAEID      string         `json:"master_SAE_ID"`
	SlaveSAEID       string         `json:"slave_SAE_ID"`
	KeySize          int            `json:"key_size"`
	StoredKeyCount   int            `json:"stored_key_count"`
	MaxKeyCount      int            `json:"max_key_count"`
	MaxKeyPerRequest int            `json:"max_key_per_request"`
	MaxKeySize       int            `json:"max_key_size"`
	MinKeySize       int            `json:"min_key_size"`
	MaxSAEIDCount    int            `json:"max_SAE_ID_count"`
	StatusExtension  map[string]any `json:"status_extension"`
}

// KeyRequest is the ETSI 014 Key request object (enc_keys POST body).
// Zero Number or Size means "absent" (the KME's default); a client that
// wants an explicit value sets a positive one.
type KeyRequest struct {
	Number                int              `json:"number,omitempty"`
	Size                  int              `json:"size,omitempty"`
	AdditionalSlaveSAEIDs []string         `json:"additional_slave_SAE_IDs,omitempty"`
	ExtensionMandatory    []map[string]any `json:"extension_mandatory,omitempty"`
	ExtensionOptional     []map[string]any `json:"extension_optional,omitempty"`
}

// KeyIDs is the ETSI 014 Key IDs object (dec_keys POST body).
type KeyIDs struct {
	KeyIDs          []KeyIDRef      `json:"key_IDs"`
	KeyIDsExtension json.RawMessage `json:"key_IDs_extension,omitempty"`
}

// KeyIDRef is one element of KeyIDs.
type KeyIDRef struct {
	KeyID          string          `json:"key_ID"`
	KeyIDExtension json.RawMessage `json:"key_ID_extension,omitempty"`
}

// KeyContainer is the ETSI 014 Key container (enc_keys and dec_keys
// answer).
type KeyContainer struct {
	Keys                  []KeyObject     `json:"keys"`
	KeyContainerExtension json.RawMessage `json:"key_container_extension,omitempty"`
}

// KeyObject is one key: a canonical lowercase UUID and the key bytes in
// standard padded base64.
type KeyObject struct {
	KeyID          string          `json:"key_ID"`
	Key            string          `json:"key"`
	KeyIDExtension json.RawMessage `json:"key_ID_extension,omitempty"`
	KeyExtension   json.RawMessage `json:"key_extension,omitempty"`
}

// Error is the ETSI 014 Error object. Details is always present (possibly
// empty) and holds objects, as the spec requires.
type Error struct {
	Message string           `json:"message"`
	Details []map[string]any `json:"details"`
}

// Spec messages, verbatim from ETSI GS QKD 014.
const (
	MsgSizeMultipleOf8    = "size shall be a multiple of 8"
	MsgExtensionMandatory = "not all extension_mandatory parameters are supported"
	MsgKeysNotFound       = "one or more keys specified are not found on KME"
)

const (
	// DefaultMaxBodyBytes bounds request bodies (64 KiB).
	DefaultMaxBodyBytes = 64 << 10
	maxJSONDepth        = 64
	maxSAEIDLen         = 128
	contentTypeJSON     = "application/json"
)
