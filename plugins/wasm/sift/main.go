// Command sift is the sift step as a WASM plugin (plugins/ABI.md).
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps/sift"
)

func init() { sdk.Register(sift.New) }

func main() {}
