"""An API server stand-in: POSTs an AdmissionReview to the webhook over verified TLS with
Python's own http.client/ssl, applies the returned JSONPatch with the `jsonpatch` package (an
independent RFC 6902 implementation) and prints {"status", "body", "review", "patched"} as JSON.

Usage: admission_client.py URL CAFILE REVIEW_JSON_FILE [CONTENT_TYPE]
"""
import base64
import http.client
import json
import ssl
import sys
import urllib.parse

import jsonpatch


def main():
    url, cafile, review_path = sys.argv[1:4]
    content_type = sys.argv[4] if len(sys.argv) > 4 else "application/json"
    with open(review_path, "rb") as f:
        body = f.read()
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
    conn.request("POST", u.path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    raw = resp.read().decode()
    out = {"status": resp.status, "body": raw, "review": None, "patched": None}
    if resp.status == 200:
        review = json.loads(raw)
        out["review"] = review
        response = review["response"]
        if response.get("patch"):
            assert response["patchType"] == "JSONPatch", response
            patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
            pod = json.loads(body)["request"]["object"]
            out["patched"] = patch.apply(pod)
    print(json.dumps(out))


main()
