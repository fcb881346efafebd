// One HTTP request for the stand-in of N/https, whose calls are synchronous: the
// stand-in runs this file as a child process and waits for it. Reads
// {url, method, headers, body} as JSON on stdin, prints {code, headers, body} or {error}.
'use strict';
const http = require('node:http');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
    const request = JSON.parse(input);
    const body = Buffer.from(request.body, 'utf8');
    const sent = http.request(
        request.url,
        { method: request.method, headers: { ...request.headers, 'Content-Length': body.length } },
        (response) => {
            const chunks = [];
            response.on('data', (chunk) => chunks.push(chunk));
            response.on('end', () => {
                process.stdout.write(JSON.stringify({
                    code: response.statusCode,
                    headers: response.headers,
                    body: Buffer.concat(chunks).toString('utf8'),
                }));
            });
        },
    );
    sent.setTimeout(45000, () => sent.destroy(new Error('timed out')));
    sent.on('error', (error) => process.stdout.write(JSON.stringify({ error: String(error.message) })));
    sent.end(body);
});
