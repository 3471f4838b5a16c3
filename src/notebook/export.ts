// Any Arrow table (metrics, rollouts, activations) to a file pandas, polars and DuckDB read:
// Arrow IPC file (.arrow, .feather: Feather v2 is the IPC file format), IPC stream (.arrows), or
// Parquet (.parquet, written by hyparquet-writer with an explicit schema so list columns stay
// lists). Written atomically.
import { type DataType, type Table, Type, tableToIPC } from "apache-arrow";
import { ByteWriter, parquetWrite } from "hyparquet-writer";
import { writeFileAtomic } from "../util/atomic-file.js";

export type ExportFormat = "arrow" | "feather" | "arrows" | "parquet";

const formats: Record<string, ExportFormat> = {
  ".arrow": "arrow",
  ".feather": "feather",
  ".arrows": "arrows",
  ".parquet": "parquet",
};

/** The parquet physical (and converted) type of an Arrow leaf type. */
function parquetLeaf(type: DataType, column: string): { type: string; converted_type?: string } {
  switch (type.typeId) {
    case Type.Int:
      return (type as unknown as { bitWidth: number }).bitWidth === 64
        ? { type: "INT64" }
        : { type: "INT32" };
    case Type.Float:
      return (type as unknown as { precision: number }).precision === 2
        ? { type: "DOUBLE" }
        : { type: "FLOAT" };
    case Type.Utf8:
      return { type: "BYTE_ARRAY", converted_type: "UTF8" };
    case Type.Bool:
      return { type: "BOOLEAN" };
    default:
      throw new TypeError(`column ${JSON.stringify(column)}: Arrow type ${type} has no Parquet mapping here`);
  }
}

function parquetBytes(table: Table): Uint8Array {
  const schema: Record<string, unknown>[] = [{ name: "root", num_children: table.schema.fields.length }];
  const columnData = table.schema.fields.map((field) => {
    const vector = table.getChild(field.name);
    const values: unknown[] = [];
    const isList = field.type.typeId === Type.List;
    for (let i = 0; i < table.numRows; i++) {
      const v = vector?.get(i) ?? null;
      if (v === null) values.push(null);
      else if (isList) values.push(Array.from((v as { toArray(): ArrayLike<unknown> }).toArray()));
      else values.push(v);
    }
    if (isList) {
      const child = (field.type as unknown as { children: { type: DataType }[] }).children[0] as {
        type: DataType;
      };
      schema.push(
        { name: field.name, repetition_type: "OPTIONAL", num_children: 1, converted_type: "LIST" },
        { name: "list", repetition_type: "REPEATED", num_children: 1 },
        { name: "element", repetition_type: "OPTIONAL", ...parquetLeaf(child.type, field.name) },
      );
    } else {
      schema.push({ name: field.name, repetition_type: "OPTIONAL", ...parquetLeaf(field.type, field.name) });
    }
    return { name: field.name, data: values };
  });
  const writer = new ByteWriter();
  parquetWrite({ writer, columnData, schema, createdBy: "tiller" } as never);
  return new Uint8Array(writer.getBuffer());
}

/**
 * Writes `table` to `file`, the format from its extension (.arrow, .feather, .arrows, .parquet)
 * unless given. Returns the file.
 */
export async function exportTable(table: Table, file: string, format?: ExportFormat): Promise<string> {
  const ext = /\.[a-z]+$/.exec(file)?.[0] ?? "";
  const chosen = format ?? formats[ext];
  if (!chosen) {
    throw new RangeError(
      `file: ${JSON.stringify(file)}: give a .arrow, .feather, .arrows or .parquet name, or a format`,
    );
  }
  const bytes =
    chosen === "parquet" ? parquetBytes(table) : tableToIPC(table, chosen === "arrows" ? "stream" : "file");
  await writeFileAtomic(file, bytes);
  return file;
}
