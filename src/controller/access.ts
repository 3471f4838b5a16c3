// What a client may reach on the controller's host. A local client (ipc or loopback, no CURVE) has
// the power of the user who started the controller. Clients of a CURVE controller are remote and
// confined: every path they name must lie under a configured root, and reward code comes only from
// tiller's own modules or from files under a reward root (no data: or other URLs).
import { existsSync, realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

export interface AccessOptions {
  /** True for remote clients: paths and reward modules are checked. */
  confined: boolean;
  /** Folders remote clients may read and write under (models, data, run folders). */
  roots: string[];
  /** Folders remote clients may load reward modules from (besides tiller's own). */
  rewardRoots: string[];
}

/** A confined client asked for something outside what it may reach. */
export class AccessError extends Error {
  readonly code = "FORBIDDEN";
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** Where tiller's own reward modules live (dist/src/rl/rewards). */
const builtinRewards = fileURLToPath(new URL("../rl/rewards/", import.meta.url));

/** The real path of `path`, following links in the part that exists (the rest may not yet). */
function realPath(path: string): string {
  let existing = resolve(path);
  const rest: string[] = [];
  while (!existsSync(existing)) {
    const parent = dirname(existing);
    if (parent === existing) break;
    rest.unshift(basename(existing));
    existing = parent;
  }
  return join(realpathSync(existing), ...rest);
}

function within(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : `${root}${sep}`);
}

export class Access {
  readonly confined: boolean;
  readonly roots: string[];
  readonly rewardRoots: string[];

  constructor(options: AccessOptions) {
    this.confined = options.confined;
    this.roots = options.roots.map(realPath);
    this.rewardRoots = [...options.rewardRoots.map(realPath), realPath(builtinRewards)];
  }

  /** The absolute path a client named; for a confined client, refused unless under a root. */
  path(field: string, value: string): string {
    const absolute = resolve(value);
    if (!this.confined) return absolute;
    const real = realPath(absolute);
    if (!this.roots.some((root) => within(real, root))) {
      throw new AccessError(
        field,
        `${JSON.stringify(value)} is outside the folders this controller serves to remote clients ` +
          `(${this.roots.join(", ") || "none"}; the controller's --root flags)`,
      );
    }
    return absolute;
  }

  /** A reward module: for a confined client only a file under a reward root (or tiller's own). */
  rewardModule(field: string, module: string): string {
    if (!this.confined) return module;
    let file: string;
    if (module.startsWith("file:")) file = fileURLToPath(module);
    else if (isAbsolute(module)) file = module;
    else {
      throw new AccessError(
        field,
        `${JSON.stringify(module.slice(0, 40))}: remote clients may give reward modules only as files ` +
          "under the controller's --reward-root folders (no data:, http: or package specifiers)",
      );
    }
    const real = realPath(file);
    if (!this.rewardRoots.some((root) => within(real, root))) {
      throw new AccessError(
        field,
        `${JSON.stringify(module)} is outside the reward folders (${this.rewardRoots.join(", ")}; --reward-root)`,
      );
    }
    return module;
  }
}
