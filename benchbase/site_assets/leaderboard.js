// benchbase leaderboard pages: sort a table by clicking a column header, filter its rows by text and
// by role. Vanilla JavaScript, no dependencies; without it the tables still show, unsorted.
"use strict";

const NUMBER = /^-?\d+(\.\d+)?$/;

// A cell's sort key: its data-value (empty: missing), else its text, as a number where it is one.
function sortKey(cell) {
  const value = cell.dataset.value;
  if (value !== undefined) return value === "" ? null : Number(value);
  const text = cell.textContent.trim();
  return NUMBER.test(text) ? Number(text) : text.toLowerCase();
}

function compare(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b));
}

// Sort the rows by column `index`: numbers largest first on the first click, text A to Z; a
// second click reverses. Missing cells stay last; ties keep the page's order.
function sortRows(table, header, index) {
  const body = table.tBodies[0];
  const numeric = body.rows.length > 0 && body.rows[0].cells[index].dataset.value !== undefined;
  const current = header.getAttribute("aria-sort");
  const descending = current ? current === "ascending" : numeric;
  const rows = Array.from(body.rows).map((row, position) => ({row, position, key: sortKey(row.cells[index])}));
  rows.sort((x, y) => {
    if (x.key === null || y.key === null) return (x.key === null) - (y.key === null) || x.position - y.position;
    return (descending ? -1 : 1) * compare(x.key, y.key) || x.position - y.position;
  });
  rows.forEach(({row}) => body.appendChild(row));
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", descending ? "descending" : "ascending");
}

// Show the rows that contain the query (case-insensitive) and whose role is checked.
function filterRows(table, query, hidden, count) {
  const words = query.trim().toLowerCase();
  let shown = 0;
  for (const row of table.tBodies[0].rows) {
    row.hidden = hidden.has(row.dataset.role) || (words !== "" && !row.textContent.toLowerCase().includes(words));
    shown += row.hidden ? 0 : 1;
  }
  count.textContent = `${shown} of ${table.tBodies[0].rows.length} rows`;
}

function setUp(table) {
  const tools = document.createElement("div");
  tools.className = "tools";
  const search = document.createElement("input");
  search.type = "search";
  search.placeholder = "Filter rows";
  search.setAttribute("aria-label", "Filter rows");
  tools.appendChild(search);
  const hidden = new Set();
  const count = document.createElement("span");
  count.className = "count";
  const update = () => filterRows(table, search.value, hidden, count);
  const roles = [...new Set(Array.from(table.tBodies[0].rows, (row) => row.dataset.role).filter(Boolean))];
  for (const role of roles.length > 1 ? roles : []) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = role;
    box.addEventListener("change", () => {
      box.checked ? hidden.delete(role) : hidden.add(role);
      update();
    });
    label.append(box, ` ${role}`);
    tools.appendChild(label);
  }
  tools.appendChild(count);
  table.parentElement.before(tools);
  search.addEventListener("input", update);
  Array.from(table.tHead.rows[0].cells).forEach((header, index) => {
    header.tabIndex = 0;
    header.addEventListener("click", () => sortRows(table, header, index));
    header.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortRows(table, header, index);
      }
    });
  });
  update();
}

document.querySelectorAll("table.board").forEach(setUp);
