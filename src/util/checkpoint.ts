// Checkpoint folders on disk: the manifest written last (every file with its size and sha256,
// hashed as a stream so that no file is too big to check and the event loop keeps turning), its
// verification, the newest sound checkpoint of a run folder (saying which newer ones were refused
// and why), and the half-written folders that a killed save leaves behind.
import { createHash } from "node:crypto";
import { createReadStream, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { UserError } from "./errors.js";

export const MANIFEST = "manifest.json";
const MANIFEST_VERSION = 2;

/** The files a checkpoint cannot be restored without (besides at least one model/*.safetensors). */
export const REQUIRED_FILES = ["state.json", "metrics.arrow", "optimizer.safetensors", "model/config.json"];

interface ManifestEntry {
  file: string;
  size: number;
  sha256: string;
}

interface Manifest {
  version: number;
  complete: boolean;
  files: ManifestEntry[];
}

function filesUnder(dir: string, prefix = ""): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(dir, join(prefix, e.name)) : [join(prefix, e.name)],
  );
}

/** The sha256 of a file, read as a stream (any size, no blocking read). */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Lists every file of `dir` with its size and sha256; written last, so its presence means done. */
export async function writeManifest(dir: string): Promise<void> {
  const files: ManifestEntry[] = [];
  for (const file of filesUnder(dir)
    .filter((f) => f !== MANIFEST)
    .sort()) {
    const path = join(dir, file);
    files.push({ file, size: statSync(path).size, sha256: await sha256File(path) });
  }
  const manifest: Manifest = { version: MANIFEST_VERSION, complete: true, files };
  writeFileSync(join(dir, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
}

function readManifest(dir: string): Manifest {
  let text: string;
  try {
    text = readFileSync(join(dir, MANIFEST), "utf8");
  } catch {
    throw new UserError(
      "NOT_FOUND",
      `${dir}: not a complete checkpoint (no ${MANIFEST}: the save did not finish)`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} is not JSON (damaged)`);
  }
  const m = value as Partial<Manifest> | null;
  if (m === null || typeof m !== "object" || Array.isArray(m)) {
    throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} is not an object`);
  }
  if (m.complete !== true) {
    throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} does not say complete: true (an unfinished save)`);
  }
  if (!Array.isArray(m.files) || m.files.length === 0) {
    throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} lists no files`);
  }
  for (const [i, f] of m.files.entries()) {
    const e = f as Partial<ManifestEntry> | null;
    if (
      e === null ||
      typeof e !== "object" ||
      typeof e.file !== "string" ||
      !Number.isSafeInteger(e.size) ||
      typeof e.sha256 !== "string" ||
      !/^[0-9a-f]{64}$/.test(e.sha256)
    ) {
      throw new UserError(
        "BAD_DATA",
        `${dir}: ${MANIFEST} files[${i}] is not {file, size, sha256} (every file must be hashed; ` +
          "a checkpoint whose manifest skips a hash cannot be verified)",
      );
    }
    if (resolve(dir, e.file) !== join(resolve(dir), e.file) || e.file.split(/[\\/]/).includes("..")) {
      throw new UserError(
        "BAD_DATA",
        `${dir}: ${MANIFEST} files[${i}] ${JSON.stringify(e.file)} is not inside the checkpoint`,
      );
    }
  }
  return m as Manifest;
}

/** Throws naming the first missing, resized or altered file of a checkpoint, or a required file the manifest lacks. */
export async function verifyCheckpoint(dir: string): Promise<void> {
  const manifest = readManifest(dir);
  const listed = new Set(manifest.files.map((f) => f.file));
  for (const file of REQUIRED_FILES) {
    if (!listed.has(file))
      throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} does not list ${file}, which a checkpoint needs`);
  }
  if (!manifest.files.some((f) => /^model\/.*\.safetensors$/.test(f.file))) {
    throw new UserError("BAD_DATA", `${dir}: ${MANIFEST} lists no model/*.safetensors`);
  }
  for (const f of manifest.files) {
    const path = join(dir, f.file);
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      throw new UserError("BAD_DATA", `${dir}: checkpoint file ${f.file} is missing`);
    }
    if (size !== f.size) {
      throw new UserError(
        "BAD_DATA",
        `${dir}: checkpoint file ${f.file} has ${size} bytes, the manifest says ${f.size}`,
      );
    }
    if ((await sha256File(path)) !== f.sha256) {
      throw new UserError(
        "BAD_DATA",
        `${dir}: checkpoint file ${f.file} does not match its sha256 (changed or corrupt)`,
      );
    }
  }
}

export function listCheckpoints(root: string): string[] {
  try {
    return readdirSync(root)
      .filter((n) => /^step-\d+$/.test(n))
      .sort();
  } catch {
    return [];
  }
}

/** Where a checkpoint was found, and the newer ones refused on the way (with why). */
export interface FoundCheckpoint {
  dir: string;
  /** The run folder this checkpoint belongs to (`<run>/checkpoints/step-N` → `<run>`). */
  runDir: string | undefined;
  refused: { dir: string; reason: string }[];
}

/** A checkpoint folder itself (verified), or a run folder's newest checkpoint that verifies. */
export async function findCheckpoint(path: string): Promise<FoundCheckpoint> {
  const dir = resolve(path);
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new UserError("NOT_FOUND", `${dir}: no such checkpoint or run folder`);
  }
  if (!isDir) throw new UserError("NOT_FOUND", `${dir}: not a folder (a checkpoint or run folder)`);
  const inRun = basename(dirname(dir)) === "checkpoints" ? dirname(dirname(dir)) : undefined;
  let manifestThere = false;
  try {
    manifestThere = statSync(join(dir, MANIFEST)).isFile();
  } catch {}
  if (manifestThere) {
    await verifyCheckpoint(dir);
    return { dir, runDir: inRun, refused: [] };
  }
  const root = join(dir, "checkpoints");
  const refused: { dir: string; reason: string }[] = [];
  for (const name of listCheckpoints(root).reverse()) {
    try {
      await verifyCheckpoint(join(root, name));
      return { dir: join(root, name), runDir: dir, refused };
    } catch (error) {
      refused.push({ dir: join(root, name), reason: (error as Error).message });
    }
  }
  const why = refused.map((r) => `\n  ${r.reason}`).join("");
  throw new UserError("NOT_FOUND", `${dir}: no complete checkpoint here or in ${root}${why}`);
}

/** The saved state (its config) of a checkpoint or run folder, verified first. */
export async function readCheckpointConfig<C>(path: string): Promise<{ dir: string; config: C }> {
  const found = await findCheckpoint(path);
  const state = JSON.parse(readFileSync(join(found.dir, "state.json"), "utf8")) as { config: C };
  return { dir: found.dir, config: state.config };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes `.NAME.partial-PID` folders in `root` whose writing process is gone (a save killed
 * mid-way); returns one line per folder removed, for the user to read.
 */
export function removeStalePartials(root: string): string[] {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = /^\.(.+)\.partial-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[2]);
    if (pidAlive(pid)) continue;
    rmSync(join(root, name), { recursive: true, force: true });
    removed.push(`removed ${join(root, name)}: a save of ${m[1]} by process ${pid} that did not finish`);
  }
  return removed;
}
