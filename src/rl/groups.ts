// Group bookkeeping shared by the estimators and the DAPO filter: which responses belong to
// which prompt. Groups are identified by a prompt index (Int32Array) or a string id (verl's uid).

/** One group id per response: the prompt index, or verl's string `uid`. */
export type GroupIds = Int32Array | readonly (string | number)[];

/** Response indices per group id, in first-appearance order of the groups. */
export function responsesByGroup(groups: GroupIds): Map<string | number, number[]> {
  const byGroup = new Map<string | number, number[]>();
  for (let i = 0; i < groups.length; i++) {
    const id = groups[i] as string | number;
    const members = byGroup.get(id);
    if (members) members.push(i);
    else byGroup.set(id, [i]);
  }
  return byGroup;
}

/** Throws unless `groups` has one entry per score. */
export function checkSameLength(
  name: string,
  values: ArrayLike<unknown>,
  expected: number,
  expectedName = "scores",
): void {
  if (values.length !== expected) {
    throw new RangeError(
      `${name} has ${values.length} entries but ${expectedName} has ${expected}; pass one per response`,
    );
  }
}
