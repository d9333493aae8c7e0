//! The one plain-text table printer of the CLI (`hosts`, `ps`, `inventory`): columns padded to
//! their widest cell, two spaces apart, trailing blanks trimmed.

/// The rows (the header first) as aligned lines. Pads by hand: a `{:w$}` width over 65,535
/// panics, and a cell can be that long.
pub fn render(cells: &[Vec<String>]) -> String {
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            cells
                .iter()
                .filter_map(|row| row.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_align_on_the_widest_cell_and_lines_end_without_blanks() {
        let cells = vec![
            vec!["NAME".to_string(), "ADDRESS".to_string(), "X".to_string()],
            vec!["web-1".to_string(), "10.0.0.1".to_string(), String::new()],
        ];
        assert_eq!(render(&cells), "NAME   ADDRESS   X\nweb-1  10.0.0.1\n");
    }

    #[test]
    fn a_cell_wider_than_65535_characters_does_not_panic() {
        let long = "x".repeat(70_000);
        let cells = vec![
            vec!["A".to_string(), "B".to_string()],
            vec![long, "b".into()],
        ];
        let out = render(&cells);
        assert!(out.lines().next().unwrap_or_default().ends_with('B'));
    }
}
