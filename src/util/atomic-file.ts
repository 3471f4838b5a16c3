// Whole-file writes that a crash cannot leave half done: readers see the old file or the new one.
import { open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * Writes `data` to `<path>.tmp-<pid>`, flushes it to disk, then renames it over `path` (atomic on
 * POSIX filesystems) and flushes the folder so the rename itself survives a power cut.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const file = await open(tmp, "w");
  try {
    await file.writeFile(data);
    await file.sync();
  } catch (error) {
    await file.close();
    await rm(tmp, { force: true });
    throw error;
  }
  await file.close();
  try {
    await rename(tmp, path);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
  await syncFolder(dirname(path));
}

async function syncFolder(folder: string): Promise<void> {
  // Some filesystems refuse fsync on a directory; the file itself is already on disk.
  try {
    const handle = await open(folder, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {}
}
