// Command amplify is the amplify step as a WASM plugin (plugins/ABI.md).
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps/amplify"
)

func init() { sdk.Register(amplify.New) }

func main() {}
