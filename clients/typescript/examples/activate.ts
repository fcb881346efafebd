import { LicensingClient } from "@keyturn/client";

const client = new LicensingClient({ baseUrl: process.env.LICENSE_SERVER_URL ?? "http://127.0.0.1:50052", productId: "acme-cad" });
const lease = await client.activate({ licenseKey: process.env.LICENSE_KEY ?? "", onLost: (_lease, error) => console.error("seat lost:", error.reason) });
console.log(`seat ${lease.activationId} (${lease.edition}) held until ${lease.expireTime.toISOString()}`);
