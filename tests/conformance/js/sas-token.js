// Prints the SAS token the official JS SDK (@azure/core-amqp) mints for the given key, audience
// and expiry. Usage: node sas-token.js <keyName> <key> <audience> <expiry-unix-seconds>
"use strict";
const { createSasTokenProvider } = require("@azure/core-amqp");

const [keyName, key, audience, expiry] = process.argv.slice(2);
// The SDK sets the expiry to now + 3600 s; pin "now" so that the expiry is the one asked for.
Date.now = () => (Number(expiry) - 3600) * 1000;
createSasTokenProvider({ sharedAccessKeyName: keyName, sharedAccessKey: key })
  .getToken(audience)
  .then((token) => process.stdout.write(token.token))
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
