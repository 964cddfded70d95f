// A judge of --serve: aws-sdk-go-v2, from its default credential chain (config.LoadDefaultConfig),
// asked every 0.2 s for argv[1] seconds; one JSON line per ask (tests/test_sdk_judges.py). Built
// offline in GOPATH mode against Debian 12's golang-github-aws-aws-sdk-go-v2-dev.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
)

func main() {
	seconds, _ := strconv.ParseFloat(os.Args[1], 64)
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Println(`{"error": "config"}`)
		os.Exit(1)
	}
	ends := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for time.Now().Before(ends) {
		value, err := cfg.Credentials.Retrieve(ctx)
		line := map[string]interface{}{"at": float64(time.Now().UnixNano()) / 1e9}
		if err != nil {
			line["error"] = err.Error()
		} else {
			line["key"] = value.AccessKeyID
			line["provider"] = value.Source
			line["expires"] = float64(value.Expires.UnixNano()) / 1e9
		}
		out, _ := json.Marshal(line)
		fmt.Println(string(out))
		time.Sleep(200 * time.Millisecond)
	}
}
