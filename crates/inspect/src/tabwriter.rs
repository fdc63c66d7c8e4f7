//! Go's `text/tabwriter` with a space pad character and no flags, which is what every istioctl
//! table goes through.
//!
//! Rules it reproduces: a cell is text terminated by a tab; tab-terminated cells of adjacent
//! lines form a column, and each column *block* (a run of lines that all have that cell) is as
//! wide as its widest cell plus the padding; the text after a line's last tab is not padded, so
//! a row whose last column is empty ends in spaces; a line without tabs ends every block.

/// Collects rows and lays them out as `tabwriter.NewWriter(w, minwidth, 8, padding, ' ', 0)`.
#[derive(Debug, Clone)]
pub struct TabWriter {
    minwidth: usize,
    padding: usize,
    lines: Vec<Vec<String>>,
}

impl TabWriter {
    /// `minwidth` and `padding` as passed to Go's `Init` (istioctl: 0 and 1 or 5).
    pub fn new(minwidth: usize, padding: usize) -> TabWriter {
        TabWriter {
            minwidth,
            padding,
            lines: Vec::new(),
        }
    }

    /// Adds one line: `cells` joined by tabs (like `fmt.Fprintf(w, "%v\t%v\n", …)`).
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        self.line(&cells.iter().map(|c| c.as_ref()).collect::<Vec<_>>().join("\t"));
    }

    /// Adds one line of raw text (tabs separate cells; no newline inside).
    pub fn line(&mut self, text: &str) {
        for l in text.split('\n') {
            self.lines.push(l.split('\t').map(str::to_owned).collect());
        }
    }

    /// The laid-out text; every line ends with `\n`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut widths = Vec::new();
        self.format(&mut out, &mut widths, 0, self.lines.len());
        out
    }

    fn format(&self, out: &mut String, widths: &mut Vec<usize>, mut line0: usize, line1: usize) {
        let column = widths.len();
        let mut this = line0;
        while this < line1 {
            // Only tab-terminated cells belong to columns: a line with n cells has n-1 of them.
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            self.write_lines(out, widths, line0, this);
            line0 = this;
            let mut width = self.minwidth;
            while this < line1 {
                let line = &self.lines[this];
                if column + 1 >= line.len() {
                    break;
                }
                width = width.max(line[column].chars().count() + self.padding);
                this += 1;
            }
            widths.push(width);
            self.format(out, widths, line0, this);
            widths.pop();
            line0 = this;
        }
        self.write_lines(out, widths, line0, line1);
    }

    fn write_lines(&self, out: &mut String, widths: &[usize], line0: usize, line1: usize) {
        for line in &self.lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if let Some(w) = widths.get(j) {
                    for _ in cell.chars().count()..*w {
                        out.push(' ');
                    }
                }
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_per_block_and_leaves_the_last_cell() {
        let mut w = TabWriter::new(0, 1);
        w.row(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"]);
        w.row(&["0.0.0.0", "80", "ALL", "PassthroughCluster"]);
        w.row(&["10.96.0.10", "53", "", ""]);
        assert_eq!(
            w.render(),
            "ADDRESSES  PORT MATCH DESTINATION\n0.0.0.0    80   ALL   PassthroughCluster\n10.96.0.10 53         \n"
        );
    }

    #[test]
    fn a_line_without_tabs_ends_the_block() {
        let mut w = TabWriter::new(0, 5);
        w.row(&["A", "B"]);
        w.row(&["long cell", "x"]);
        w.line("");
        w.row(&["C", "D"]);
        assert_eq!(w.render(), "A             B\nlong cell     x\n\nC     D\n");
    }

    #[test]
    fn shorter_rows_split_inner_columns() {
        // Column 1 only spans lines that have a second tab-terminated cell.
        let mut w = TabWriter::new(0, 1);
        w.line("a\tbb\tc");
        w.line("aaa\tb");
        w.line("a\tbbbb\tc");
        assert_eq!(w.render(), "a   bb c\naaa b\na   bbbb c\n");
    }
}
