// Token ids as HF config files give them: a number, a list, or null. transformers 5.x writes
// `"eos_token_id": null` (and bos/pad) when a model has none, so null means "no such token".

/** The ids in an HF `*_token_id` value: null and a missing value are none; anything else must be ids. */
export function tokenIdList(value: unknown, field: string): number[] {
  if (value === undefined || value === null) return [];
  const list = Array.isArray(value) ? value : [value];
  return list.flatMap((id, i) => {
    if (id === null) return [];
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
      const where = Array.isArray(value) ? `${field}[${i}]` : field;
      throw new TypeError(
        `${where}: ${JSON.stringify(id)} is not a token id (a non-negative integer, or null for none)`,
      );
    }
    return [id];
  });
}
