// A judge of --serve: aws-sdk-go (v1), from its default credential chain, asked every 0.2 s for
// argv[1] seconds; one JSON line per ask (tests/test_sdk_judges.py). Built offline in GOPATH mode
// against Debian 12's golang-github-aws-aws-sdk-go-dev.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go/aws/session"
)

func main() {
	seconds, _ := strconv.ParseFloat(os.Args[1], 64)
	sess := session.Must(session.NewSession())
	ends := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for time.Now().Before(ends) {
		value, err := sess.Config.Credentials.Get()
		line := map[string]interface{}{"at": float64(time.Now().UnixNano()) / 1e9}
		if err != nil {
			line["error"] = err.Error()
		} else {
			line["key"] = value.AccessKeyID
			line["provider"] = value.ProviderName
			expires, _ := sess.Config.Credentials.ExpiresAt()
			line["expires"] = float64(expires.UnixNano()) / 1e9
		}
		out, _ := json.Marshal(line)
		fmt.Println(string(out))
		time.Sleep(200 * time.Millisecond)
	}
}
