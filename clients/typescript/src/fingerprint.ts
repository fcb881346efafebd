/**
 * A device fingerprint that is stable per machine and says nothing about its
 * user: the same recipe as the Python client's, so both SDKs on one machine
 * name it alike (and get the same seat back).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";

const PREFIX = "keyturn-fingerprint-v1";
const MACHINE_ID_FILES = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/** The OS's machine id when readable: survives reboots and network changes. */
function machineId(): string {
  for (const path of MACHINE_ID_FILES) {
    try {
      const value = readFileSync(path, "ascii").trim();
      if (value) {
        return value;
      }
    } catch {
      // not on this system: try the next one
    }
  }
  return "";
}

/** The first hardware MAC address (as Python's uuid.getnode() prints it), for systems without a machine id. */
function macAddress(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) {
      if (!address.internal && address.mac && address.mac !== "00:00:00:00:00:00") {
        return address.mac.replaceAll(":", "").toLowerCase();
      }
    }
  }
  return "000000000000";
}

/**
 * SHA-256 (hex, 64 characters) of the machine id (or the MAC address without
 * one) and the product id. Hashed so the raw id never leaves the machine;
 * salted with the product so two vendors cannot match up their users'
 * machines. Pass your own (`activate({fingerprint})`) where the OS offers a
 * better id (Electron apps on Windows and macOS, say).
 */
export function defaultFingerprint(productId = ""): string {
  const machine = machineId() || `node:${macAddress()}`;
  return createHash("sha256").update(`${PREFIX}\0${productId}\0${machine}`).digest("hex");
}
